//! The worker over a real nats-server, against a fake Rota server made of a few subscriptions.
//!
//! The unit tests cover the decisions; this covers the wiring: the dispatch deadline on the
//! wire, a frequent job's reports (and the answers that reach it through the ack inbox), and log
//! batches that the server refuses for a while. It needs `nats-server` (from
//! `$ROTA_NATS_SERVER_BIN` or `PATH`) and is skipped, with a note, without one.

// The helpers live in a test module, where clippy lets them unwrap as the tests themselves may.
#[cfg(test)]
mod over_nats {
    use std::collections::HashMap;
    use std::path::PathBuf;
    use std::process::Stdio;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use async_nats::Client;
    use futures::StreamExt;
    use rota_shared::message::{
        AcquireReply, DispatchAck, DispatchRequest, Frequent, FrequentMode, LogAck, LogBatch,
        LogLine, ReportAck, ReportAction, StatusBatchAck, StatusReport, StatusReportBatch,
    };
    use rota_shared::{ErrorBody, ErrorCode, InstanceStatus, Reply};
    use rota_transport::{Credential, Incoming, Key, Scope, Seal, Stamper, Transport};
    use rota_worker::{ProcessResult, ProcessorRegistry, TaskContext, Worker, WorkerConfig};
    use tokio::process::{Child, Command};
    use tokio::time::Instant;

    const WORKER: &str = "w-it1";

    fn now_ms() -> i64 {
        rota_transport::wall_ms()
    }

    fn nats_binary() -> Option<PathBuf> {
        if let Some(path) = std::env::var_os("ROTA_NATS_SERVER_BIN") {
            return Some(PathBuf::from(path));
        }
        let path = std::env::var_os("PATH")?;
        std::env::split_paths(&path)
            .map(|dir| dir.join("nats-server"))
            .find(|candidate| candidate.is_file())
    }

    /// A nats-server on a free port, killed when dropped.
    struct Nats {
        _child: Child,
        client: Client,
        url: String,
    }

    async fn start_nats() -> Option<Nats> {
        let binary = nats_binary()?;
        // The port is free when asked; another process taking it before nats-server binds it would
        // make the connect below fail, not the test pass wrongly.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .ok()?
            .local_addr()
            .ok()?
            .port();
        let child = Command::new(binary)
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .ok()?;
        let url = format!("nats://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(client) = async_nats::connect(&url).await {
                return Some(Nats {
                    _child: child,
                    client,
                    url,
                });
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The keys the fake server and the worker share (the app `demo` with the secret `s3cret`).
    struct Keys {
        app: Key,
        worker: Key,
        /// What the fake server seals its dispatches with.
        server: Credential,
    }

    fn keys() -> Keys {
        let app = rota_transport::keys::app_key("demo", "s3cret").unwrap();
        let worker = rota_transport::keys::worker_key(&app, "demo", WORKER);
        let scope = Scope::Worker { key_id: app.id() };
        let server = Credential::new(scope, worker.clone(), "s1", Arc::new(Stamper::new()));
        Keys {
            app,
            worker,
            server,
        }
    }

    /// What the fake server saw, and how it answers.
    #[derive(Default)]
    struct Fake {
        reports: Mutex<Vec<StatusReport>>,
        lines: Mutex<Vec<LogLine>>,
        /// Log batches are refused (`UNAVAILABLE`, as with the database down) until then.
        logs_down_until: Mutex<Option<Instant>>,
        refused_batches: AtomicU64,
        /// Answer "stop" to this report of an instance.
        stop_at: Mutex<HashMap<i64, i64>>,
        /// Answer report batches as a server older than them would: NOT_FOUND.
        batches_unknown: AtomicBool,
        /// Report batches answered, and terminal reports that came on their own.
        batches: AtomicU64,
        single_terminals: AtomicU64,
    }

    impl Fake {
        fn reports_of(&self, instance_id: i64) -> Vec<StatusReport> {
            let reports = self.reports.lock().unwrap();
            reports
                .iter()
                .filter(|r| r.instance_id == instance_id)
                .cloned()
                .collect()
        }

        /// Records a report and answers it as a server would.
        fn take(&self, report: StatusReport) -> ReportAck {
            let stop = self.stop_at.lock().unwrap().get(&report.instance_id) == Some(&report.seq);
            self.reports.lock().unwrap().push(report);
            let action = if stop {
                ReportAction::Stop
            } else {
                ReportAction::Continue
            };
            ReportAck { action }
        }

        fn log_texts(&self, instance_id: i64) -> Vec<String> {
            let lines = self.lines.lock().unwrap();
            lines
                .iter()
                .filter(|l| l.instance_id == instance_id)
                .map(|l| l.text.clone())
                .collect()
        }
    }

    /// A NATS server with the fake Rota server answering on it.
    async fn start_fake() -> Option<(Nats, Arc<Fake>)> {
        let nats = start_nats().await?;
        let fake = Arc::new(Fake::default());
        tokio::spawn(serve_fake(nats.client.clone(), Arc::clone(&fake)));
        nats.client.flush().await.ok()?;
        Some((nats, fake))
    }

    /// Answers as a Rota server would: every message must be sealed by the worker (with the
    /// app key for discovery, the worker key otherwise), and every answer is sealed alike.
    async fn serve_fake(client: Client, fake: Arc<Fake>) {
        let keys = keys();
        let transport = Transport::new(client.clone());
        let acquire = client.subscribe("rota.discovery.demo").await.unwrap();
        let server = client.subscribe("rota.app.demo.srv.s1.>").await.unwrap();
        let mut requests = futures::stream::select(acquire, server);
        while let Some(msg) = requests.next().await {
            let subject = msg.subject.to_string();
            let key = if subject.contains(".discovery.") {
                &keys.app
            } else {
                &keys.worker
            };
            let seal = Seal::require(msg.headers.as_ref()).expect("the worker seals everything");
            assert!(
                seal.verify(key, &subject, &msg.payload),
                "a bad seal on {subject}"
            );
            assert_eq!(seal.sender, WORKER);
            if msg.reply.is_none() {
                continue;
            }
            let answer: Result<serde_json::Value, ErrorBody> = if subject.contains(".discovery.") {
                Ok(serde_json::to_value(AcquireReply {
                    server_id: "s1".to_owned(),
                    app_id: 1,
                    epoch: 1,
                })
                .unwrap())
            } else if subject.ends_with(".status") {
                let report: StatusReport = serde_json::from_slice(&msg.payload).unwrap();
                if report.status.is_terminal() {
                    fake.single_terminals.fetch_add(1, Ordering::Relaxed);
                }
                Ok(serde_json::to_value(fake.take(report)).unwrap())
            } else if subject.ends_with(".reports") && fake.batches_unknown.load(Ordering::Relaxed)
            {
                Err(ErrorBody::not_found("unknown endpoint \"reports\""))
            } else if subject.ends_with(".reports") {
                fake.batches.fetch_add(1, Ordering::Relaxed);
                let batch: StatusReportBatch = serde_json::from_slice(&msg.payload).unwrap();
                let results = batch
                    .reports
                    .into_iter()
                    .map(|r| Reply::ok(fake.take(r)))
                    .collect();
                Ok(serde_json::to_value(StatusBatchAck { results }).unwrap())
            } else if subject.ends_with(".logs") {
                let down = fake
                    .logs_down_until
                    .lock()
                    .unwrap()
                    .is_some_and(|until| Instant::now() < until);
                if down {
                    fake.refused_batches.fetch_add(1, Ordering::Relaxed);
                    Err(ErrorBody::new(ErrorCode::Unavailable, "database down"))
                } else {
                    let batch: LogBatch = serde_json::from_slice(&msg.payload).unwrap();
                    let stored = batch.lines.len() as u64;
                    fake.lines.lock().unwrap().extend(batch.lines);
                    Ok(serde_json::to_value(LogAck { stored, refused: 0 }).unwrap())
                }
            } else {
                continue;
            };
            transport
                .respond(&Incoming::Plain(msg), answer, Some(key))
                .await;
        }
    }

    fn dispatch(instance_id: i64, frequent: Option<Frequent>, deadline_ms: i64) -> DispatchRequest {
        DispatchRequest {
            server_id: "s1".to_owned(),
            app_id: 1,
            job_id: 1,
            job_name: "tick".to_owned(),
            instance_id,
            attempt: 1,
            processor: "tick".to_owned(),
            config: String::new(),
            job_params: None,
            instance_params: None,
            timeout_ms: 0,
            expected_trigger_time_ms: None,
            frequent,
            deadline_ms: Some(deadline_ms),
            start_at_ms: None,
            execution: Default::default(),
            task_retries: 0,
            container: None,
        }
    }

    /// Sends a dispatch sealed as server `s1` and returns the worker's (verified) answer.
    async fn send_dispatch(
        client: &Client,
        req: &DispatchRequest,
    ) -> Result<DispatchAck, ErrorBody> {
        let subject = format!("rota.app.demo.wrk.{WORKER}.dispatch");
        let credential = &keys().server;
        match Transport::new(client.clone())
            .request(&subject, req, Duration::from_secs(5), Some(credential))
            .await
        {
            Ok(ack) => Ok(ack),
            Err(e) => Err(e.remote().cloned().unwrap_or_else(|| panic!("{e}"))),
        }
    }

    /// Sends a dispatch without a seal, as anyone on the bus could, and returns the refusal.
    async fn client_request(client: &Client, req: &DispatchRequest) -> ErrorBody {
        let reply = client
            .request(
                format!("rota.app.demo.wrk.{WORKER}.dispatch"),
                serde_json::to_vec(req).unwrap().into(),
            )
            .await
            .unwrap();
        rota_shared::envelope::decode_reply::<DispatchAck>(&reply.payload).unwrap_err()
    }

    /// Waits for the terminal report of an instance.
    async fn terminal(fake: &Fake, instance_id: i64) -> StatusReport {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(report) = fake
                .reports_of(instance_id)
                .into_iter()
                .find(|r| r.status.is_terminal())
            {
                return report;
            }
            assert!(
                Instant::now() < deadline,
                "no terminal report for {instance_id}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn check_progress(reports: &[StatusReport]) {
        let seqs: Vec<i64> = reports.iter().map(|r| r.seq).collect();
        assert!(seqs.len() >= 2, "{seqs:?}");
        assert_eq!(seqs[0], 1);
        assert!(seqs.windows(2).all(|w| w[1] > w[0]), "{seqs:?}");
        assert_eq!(
            (reports[0].status, reports[0].runs),
            (InstanceStatus::Running, Some(0))
        );
        let runs: Vec<i64> = reports.iter().map(|r| r.runs.unwrap_or(-1)).collect();
        assert!(runs.windows(2).all(|w| w[1] >= w[0]), "{runs:?}");
        assert!(reports.iter().all(|r| !r.alert));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn deadline_frequent_runs_and_a_log_outage_over_nats() {
        let Some((nats, fake)) = start_fake().await else {
            eprintln!("skipped: no nats-server (set ROTA_NATS_SERVER_BIN or put it on PATH)");
            return;
        };

        let mut registry = ProcessorRegistry::new();
        let counter = Arc::new(AtomicU64::new(0));
        registry.register(
            "tick",
            rota_worker::processor_fn(move |ctx: TaskContext| {
                let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
                async move {
                    ctx.info(format!("run {n} on {}", ctx.worker_id));
                    ProcessResult::ok(format!("run {n}"))
                }
            }),
        );
        let config = WorkerConfig {
            nats: rota_transport::NatsOptions::new(nats.url.clone()),
            app: "demo".to_owned(),
            secret: "s3cret".to_owned(),
            worker_id: Some(WORKER.to_owned()),
            progress_interval: Duration::from_millis(300),
            log_flush_interval: Duration::from_millis(100),
            ..WorkerConfig::default()
        };
        let worker = Worker::start(config, registry).await.unwrap();

        // A dispatch without the server's seal is refused, and runs nothing.
        let unsealed = client_request(&nats.client, &dispatch(9, None, now_ms() + 5_000)).await;
        assert_eq!(unsealed.code, ErrorCode::Unauthorized, "{unsealed:?}");

        // A dispatch that arrives after its deadline is refused, and not remembered: the same
        // attempt, in time, is accepted.
        let late = dispatch(1, None, now_ms() - 1_000);
        let refused = send_dispatch(&nats.client, &late).await.unwrap_err();
        assert_eq!(refused.code, ErrorCode::Rejected);
        assert_eq!(refused.message, "dispatch expired");
        let in_time = dispatch(1, None, now_ms() + 5_000);
        assert!(
            send_dispatch(&nats.client, &in_time)
                .await
                .unwrap()
                .accepted
        );
        assert_eq!(terminal(&fake, 1).await.status, InstanceStatus::Succeeded);

        // A frequent job at a fixed rate of 50 ms for 1.5 s, while the log store is down for the
        // first second.
        *fake.logs_down_until.lock().unwrap() = Some(Instant::now() + Duration::from_secs(1));
        let frequent = Frequent {
            mode: FrequentMode::FixedRate,
            interval_ms: 50,
            lifecycle_end_ms: Some(now_ms() + 1_500),
        };
        let req = dispatch(2, Some(frequent), now_ms() + 5_000);
        assert!(send_dispatch(&nats.client, &req).await.unwrap().accepted);
        let end = terminal(&fake, 2).await;
        let runs = end.runs.unwrap();
        assert_eq!(end.status, InstanceStatus::Succeeded);
        assert_eq!(
            end.result.as_deref(),
            Some(format!("lifecycle ended after {runs} runs").as_str())
        );
        // About 30; the margin is for a loaded machine, where ticks come late.
        assert!((10..=31).contains(&runs), "{runs} runs in 1.5 s at 50 ms");
        let reports = fake.reports_of(2);
        check_progress(&reports[..reports.len() - 1]);
        assert!(fake.refused_batches.load(Ordering::Relaxed) > 0);

        // Every line the runs wrote reaches the store once the outage is over, in order: the
        // tracker's first line, one per run, and its last.
        let deadline = Instant::now() + Duration::from_secs(10);
        let texts = loop {
            let texts = fake.log_texts(2);
            if texts
                .last()
                .is_some_and(|t| t.starts_with("frequent job ended"))
            {
                break texts;
            }
            assert!(Instant::now() < deadline, "log incomplete: {texts:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert!(
            texts[0].starts_with("frequent job: fixed rate"),
            "{texts:?}"
        );
        let first_run: u64 = texts[1]
            .strip_prefix("run ")
            .and_then(|rest| rest.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap();
        let expected: Vec<String> = (0..u64::try_from(runs).unwrap())
            .map(|i| format!("run {} on {WORKER}", first_run + i))
            .collect();
        assert_eq!(texts[1..texts.len() - 1], expected[..]);

        // The server answers "stop" to the second report of another frequent instance.
        fake.stop_at.lock().unwrap().insert(3, 2);
        let forever = Frequent {
            mode: FrequentMode::FixedDelay,
            interval_ms: 50,
            lifecycle_end_ms: None,
        };
        let req = dispatch(3, Some(forever), now_ms() + 5_000);
        assert!(send_dispatch(&nats.client, &req).await.unwrap().accepted);
        let end = terminal(&fake, 3).await;
        assert_eq!(end.status, InstanceStatus::Stopped);
        let runs = end.runs.unwrap();
        assert!(runs > 0);
        assert_eq!(
            end.result.as_deref(),
            Some(format!("stopped by server after {runs} runs").as_str())
        );
        // Stopped at the second report, 300 ms in: it did not run on.
        let reports = fake.reports_of(3);
        assert_eq!(
            reports.len(),
            3,
            "RUNNING, RUNNING (answered stop), STOPPED"
        );

        worker.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn terminal_reports_go_in_batches_and_alone_to_a_server_without_batches() {
        let Some((nats, fake)) = start_fake().await else {
            eprintln!("skipped: no nats-server (set ROTA_NATS_SERVER_BIN or put it on PATH)");
            return;
        };
        let mut registry = ProcessorRegistry::new();
        registry.register(
            "tick",
            rota_worker::processor_fn(|_ctx: TaskContext| async { ProcessResult::ok("done") }),
        );
        let config = WorkerConfig {
            nats: rota_transport::NatsOptions::new(nats.url.clone()),
            app: "demo".to_owned(),
            secret: "s3cret".to_owned(),
            worker_id: Some(WORKER.to_owned()),
            ..WorkerConfig::default()
        };
        let worker = Worker::start(config, registry).await.unwrap();

        // Ten short runs at once: their terminal reports arrive in batches, not alone.
        for id in 20..30 {
            let req = dispatch(id, None, now_ms() + 5_000);
            assert!(send_dispatch(&nats.client, &req).await.unwrap().accepted);
        }
        for id in 20..30 {
            assert_eq!(terminal(&fake, id).await.status, InstanceStatus::Succeeded);
        }
        assert!(fake.batches.load(Ordering::Relaxed) >= 1);
        assert_eq!(fake.single_terminals.load(Ordering::Relaxed), 0);

        // A server that does not know batches gets each report on its own.
        fake.batches_unknown.store(true, Ordering::Relaxed);
        let req = dispatch(40, None, now_ms() + 5_000);
        assert!(send_dispatch(&nats.client, &req).await.unwrap().accepted);
        assert_eq!(terminal(&fake, 40).await.status, InstanceStatus::Succeeded);
        assert_eq!(fake.single_terminals.load(Ordering::Relaxed), 1);

        worker.shutdown().await;
    }
}
