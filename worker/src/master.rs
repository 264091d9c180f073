//! The master of a distributed instance: the worker that received the dispatch splits the
//! work into tasks, hands them to the app's eligible workers and decides the instance's result.
//!
//! It asks the owner which live workers may run the job (the cluster query) at the start and
//! every [`CLUSTER_REFRESH`] while the instance runs, so that workers that join take tasks and
//! the tasks of workers that left run elsewhere. Tasks go out in batches of at most [`BATCH`],
//! one batch in flight per worker and at most [`WINDOW`] unfinished tasks per worker, so that a
//! slow worker is not flooded and a fast one is kept busy. Every task is kept in the master's
//! task store on disk (see `task_store`).
//!
//! The rules (`rota_shared::task`): a failed task runs again while `task_retries` allow; a task
//! whose worker is lost or stops answering runs on another worker without using a retry, except
//! a broadcast task, which belongs to its worker and fails ("worker lost"). The master's own
//! death loses the attempt: its task workers drop their tasks when they can no longer reach it,
//! and the server retries the instance like any other.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use rota_shared::message::{ClusterQuery, ClusterReply, DispatchRequest, LogLine};
use rota_shared::subject::{ServerEndpoint, WorkerEndpoint};
use rota_shared::task::{
    Execution, MAX_TASK_BYTES_PER_MESSAGE, MAX_TASKS_PER_MESSAGE, Shard, Task, TaskBatch,
    TaskBatchAck, TaskCall, TaskCounts, TaskInfo, TaskReport, TaskReportAck, TaskStop,
};
use rota_shared::{ErrorBody, ErrorCode};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::agent::Agent;
use crate::context::{MapError, TaskContext};
use crate::link::{CallError, Link, REQUEST_TIMEOUT};
use crate::processor::{ProcessResult, Processor, by_counts};
use crate::task_store::{Applied, NewTask, TaskResults, TaskStore};
use crate::tasks::{chunks, execute};

/// Tasks one batch carries at most.
const BATCH: usize = 1_000;
/// Unfinished tasks one worker holds at most.
const WINDOW: usize = 4_000;
/// How often the master asks the owner which workers are live and eligible.
const CLUSTER_REFRESH: Duration = Duration::from_secs(1);
/// How long a worker that did not take a batch is left out before it is tried again.
const SIT_OUT: Duration = Duration::from_secs(5);
/// How long a task batch may take to be acknowledged.
const SEND_TIMEOUT: Duration = Duration::from_secs(5);
/// A worker missing from the owner's view this long is lost. The grace covers an owner that
/// has just taken the app over and has not heard every worker's heartbeat yet.
const MISSING_GRACE: Duration = Duration::from_secs(5);
/// A worker that holds tasks and has not been heard (a report, or the heartbeat a run sends
/// every `TASK_HEARTBEAT`) this long has dropped them: they run elsewhere.
const PEER_SILENCE: Duration = Duration::from_secs(10);
/// Events waiting for the master at most; senders wait beyond.
const INBOX_DEPTH: usize = 256;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What reaches a master's loop.
pub(crate) enum Event {
    /// A task worker's results, sub-tasks and log lines, and where to answer.
    Report {
        report: TaskReport,
        reply: oneshot::Sender<Result<TaskReportAck, ErrorBody>>,
    },
    /// Sub-tasks emitted on the master itself (by the root task).
    Map {
        parent: u64,
        name: String,
        payloads: Vec<String>,
    },
    /// The root task ended.
    RootDone(ProcessResult),
    /// How a batch sent to a worker was answered: the tasks of the messages it did not take,
    /// and why.
    Sent {
        worker: String,
        refused: Vec<u64>,
        error: Option<CallError>,
    },
    /// The owner's answer to the cluster query.
    Cluster(Result<Vec<String>, CallError>),
    /// A page of the tasks, for `rota instance tasks`.
    List {
        after: Option<u64>,
        limit: usize,
        reply: oneshot::Sender<Result<Vec<TaskInfo>, ErrorBody>>,
    },
}

/// Where a master's events are sent.
#[derive(Clone)]
pub(crate) struct MasterInbox(mpsc::Sender<Event>);

impl MasterInbox {
    pub(crate) async fn send(&self, event: Event) -> bool {
        self.0.send(event).await.is_ok()
    }

    /// Sub-tasks emitted on the master, in chunks so that other events are not held up.
    pub(crate) async fn map(
        &self,
        parent: u64,
        name: &str,
        payloads: Vec<String>,
    ) -> Result<(), MapError> {
        for chunk in chunks(payloads) {
            let event = Event::Map {
                parent,
                name: name.to_owned(),
                payloads: chunk,
            };
            if !self.send(event).await {
                return Err(MapError::Ended);
            }
        }
        Ok(())
    }
}

/// The masters this worker runs, by instance.
#[derive(Default)]
pub(crate) struct Masters {
    masters: Mutex<HashMap<i64, (i32, MasterInbox)>>,
}

impl Masters {
    /// The master of this attempt, if it runs here.
    pub(crate) fn get(&self, instance_id: i64, attempt: i32) -> Option<MasterInbox> {
        lock(&self.masters)
            .get(&instance_id)
            .filter(|(a, _)| *a == attempt)
            .map(|(_, inbox)| inbox.clone())
    }

    /// The master of the instance's attempt that runs here, whichever it is.
    pub(crate) fn of_instance(&self, instance_id: i64) -> Option<MasterInbox> {
        lock(&self.masters)
            .get(&instance_id)
            .map(|(_, inbox)| inbox.clone())
    }

    /// How many masters run here.
    pub(crate) fn len(&self) -> usize {
        lock(&self.masters).len()
    }

    /// Registers the master of an attempt until the returned guard is dropped (also when the
    /// master's task is aborted).
    fn register(
        agent: &Arc<Agent>,
        instance_id: i64,
        attempt: i32,
        inbox: MasterInbox,
    ) -> Registration {
        lock(&agent.masters.masters).insert(instance_id, (attempt, inbox));
        Registration {
            agent: Arc::clone(agent),
            instance_id,
            attempt,
        }
    }

    fn remove(&self, instance_id: i64, attempt: i32) {
        let mut masters = lock(&self.masters);
        if masters
            .get(&instance_id)
            .is_some_and(|(a, _)| *a == attempt)
        {
            masters.remove(&instance_id);
        }
    }
}

/// Keeps a master registered while it lives.
struct Registration {
    agent: Arc<Agent>,
    instance_id: i64,
    attempt: i32,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.agent.masters.remove(self.instance_id, self.attempt);
    }
}

/// The live workers that may run the job's tasks, by the owner.
async fn cluster(link: &Link, job_id: i64, processor: &str) -> Result<Vec<String>, CallError> {
    let reply: ClusterReply = link
        .call(
            ServerEndpoint::Cluster,
            &ClusterQuery {
                job_id: Some(job_id),
            },
            REQUEST_TIMEOUT,
        )
        .await?;
    Ok(reply
        .workers
        .into_iter()
        .filter(|w| w.processors.iter().any(|p| p == processor))
        .map(|w| w.worker_id)
        .collect())
}

/// A worker the master gives tasks to.
#[derive(Debug)]
struct Peer {
    /// Tasks given to it that it has not reported.
    in_flight: HashSet<u64>,
    /// A batch is on its way to it.
    sending: bool,
    /// It did not take a batch: left out until then.
    sit_out_until: Option<Instant>,
    /// When it was last heard: a batch taken, a report, a heartbeat.
    last_heard: Instant,
    /// Since when the owner's view has not listed it.
    missing_since: Option<Instant>,
    /// The number of the last report applied from it.
    last_seq: u64,
}

impl Peer {
    fn new() -> Self {
        Self {
            in_flight: HashSet::new(),
            sending: false,
            sit_out_until: None,
            last_heard: Instant::now(),
            missing_since: None,
            last_seq: 0,
        }
    }
}

/// Runs a distributed instance's attempt to its result. `counts` is where the tracker reads
/// the task counts its reports carry.
pub(crate) async fn run(
    agent: Arc<Agent>,
    req: DispatchRequest,
    processor: Arc<dyn Processor>,
    cancel: CancellationToken,
    counts: Arc<Mutex<Option<TaskCounts>>>,
) -> ProcessResult {
    let dir = agent
        .config
        .state_dir
        .clone()
        .unwrap_or_else(std::env::temp_dir)
        .join("tasks");
    let store = match TaskStore::create(&dir, req.task_retries, req.execution.pins_tasks()) {
        Ok(store) => store,
        Err(e) => return ProcessResult::failed(format!("cannot keep the tasks: {e}")),
    };
    let (tx, rx) = mpsc::channel(INBOX_DEPTH);
    let inbox = MasterInbox(tx);
    let _registration = Masters::register(&agent, req.instance_id, req.attempt, inbox.clone());
    let mut master = Master {
        agent: Arc::clone(&agent),
        req,
        processor,
        cancel,
        counts,
        store,
        inbox,
        rx,
        peers: BTreeMap::new(),
        used: HashSet::new(),
        pinned: HashMap::new(),
        root_result: None,
        refreshing: false,
    };
    let result = master.run().await;
    *lock(&master.counts) = Some(master.store.counts());
    master.stop_peers();
    result
}

struct Master {
    agent: Arc<Agent>,
    req: DispatchRequest,
    processor: Arc<dyn Processor>,
    cancel: CancellationToken,
    counts: Arc<Mutex<Option<TaskCounts>>>,
    store: TaskStore,
    inbox: MasterInbox,
    rx: mpsc::Receiver<Event>,
    peers: BTreeMap<String, Peer>,
    /// Every worker given tasks in this attempt: each is told when the attempt ends.
    used: HashSet<String>,
    /// A cluster query is on its way.
    refreshing: bool,
    /// A broadcast task's worker.
    pinned: HashMap<u64, String>,
    /// The root task's result, once it ended (map and map-reduce).
    root_result: Option<ProcessResult>,
}

impl Master {
    /// The context of a step on the master: the root task may map, the others may not.
    fn ctx_with(&self, can_map: bool) -> TaskContext {
        TaskContext::on_master(
            &self.req,
            &self.agent.worker_id,
            self.agent.logs.clone(),
            self.inbox.clone(),
            self.cancel.child_token(),
            can_map,
        )
    }

    fn ctx(&self) -> TaskContext {
        self.ctx_with(false)
    }

    fn info(&self, text: String) {
        self.ctx().info(text);
    }

    async fn run(&mut self) -> ProcessResult {
        let workers = match cluster(&self.agent.link, self.req.job_id, &self.req.processor).await {
            Ok(workers) if workers.is_empty() => {
                return ProcessResult::failed("no live worker may run the job's tasks");
            }
            Ok(workers) => workers,
            Err(e) => return ProcessResult::failed(format!("cluster query failed: {e}")),
        };
        for w in &workers {
            self.peers.entry(w.clone()).or_insert_with(Peer::new);
        }
        self.info(format!(
            "master of a {} run over {} workers: {}",
            self.req.execution.as_str(),
            workers.len(),
            workers.join(", ")
        ));
        let mut root = None;
        match self.req.execution.clone() {
            Execution::Standalone => {
                return ProcessResult::failed("a standalone instance has no master");
            }
            Execution::Broadcast => {
                let pre = self.processor.pre(self.ctx());
                let pre = tokio::select! {
                    result = pre => result,
                    () = self.cancel.cancelled() => return ProcessResult::failed("stopped"),
                };
                if !pre.success {
                    return ProcessResult::failed(format!("pre failed: {}", pre.message));
                }
                let total = workers.len() as u32;
                let tasks = (0..total)
                    .map(|index| NewTask {
                        name: "BROADCAST".to_owned(),
                        payload: String::new(),
                        shard: Some(Shard {
                            index,
                            total,
                            param: String::new(),
                        }),
                    })
                    .collect();
                let ids = match self.store.add(tasks) {
                    Ok(ids) => ids,
                    Err(e) => return ProcessResult::failed(e.to_string()),
                };
                // Every task goes to its own worker now; none waits in the queue.
                for (id, worker) in ids.into_iter().zip(&workers) {
                    self.pinned.insert(id, worker.clone());
                    if let Err(e) = self.send_pinned(id) {
                        return ProcessResult::failed(e);
                    }
                }
            }
            Execution::Sharding { shards } => {
                let total = shards.len() as u32;
                let tasks = shards
                    .into_iter()
                    .map(|item| NewTask {
                        name: "SHARD".to_owned(),
                        payload: item.param.clone(),
                        shard: Some(Shard {
                            index: item.index,
                            total,
                            param: item.param,
                        }),
                    })
                    .collect();
                if let Err(e) = self.store.add(tasks) {
                    return ProcessResult::failed(e.to_string());
                }
            }
            Execution::Map | Execution::MapReduce => {
                let ctx = self.ctx_with(true);
                let processor = Arc::clone(&self.processor);
                let inbox = self.inbox.clone();
                let cancel = self.cancel.child_token();
                root = Some(crate::tracker::AbortOnDrop(tokio::spawn(async move {
                    let result = execute(processor, ctx, 0, &cancel)
                        .await
                        .unwrap_or_else(|| ProcessResult::failed("stopped"));
                    inbox.send(Event::RootDone(result)).await;
                })));
            }
        }

        let mut refresh =
            tokio::time::interval_at(Instant::now() + CLUSTER_REFRESH, CLUSTER_REFRESH);
        refresh.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut publish = tokio::time::interval(Duration::from_millis(200));
        publish.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            if let Err(e) = self.dispatch() {
                return ProcessResult::failed(e);
            }
            if let Some(result) = &self.root_result
                && !result.success
            {
                return ProcessResult::failed(format!("the root task failed: {}", result.message));
            }
            if self.done() {
                break;
            }
            tokio::select! {
                biased;
                () = self.cancel.cancelled() => return ProcessResult::failed("stopped"),
                event = self.rx.recv() => match event {
                    Some(event) => {
                        if let Err(e) = self.handle(event) {
                            return ProcessResult::failed(e);
                        }
                    }
                    None => return ProcessResult::failed("the master's inbox closed"),
                },
                _ = refresh.tick() => {
                    self.ask_cluster();
                    if let Err(e) = self.check_silence() {
                        return ProcessResult::failed(e);
                    }
                }
                _ = publish.tick() => *lock(&self.counts) = Some(self.store.counts()),
            }
        }
        drop(root);
        *lock(&self.counts) = Some(self.store.counts());
        let counts = self.store.counts();
        self.info(format!(
            "tasks ended: {} succeeded, {} failed of {}",
            counts.succeeded, counts.failed, counts.total
        ));
        self.last_step().await
    }

    /// Whether every task ended (and, for a map, the root task too).
    fn done(&self) -> bool {
        let root_ended = !self.req.execution.has_root() || self.root_result.is_some();
        root_ended && self.store.pending() == 0 && self.store.all_finished()
    }

    /// `reduce`, `post`, or the counts' verdict.
    async fn last_step(&mut self) -> ProcessResult {
        let results: TaskResults = self.store.results();
        let ctx = self.ctx();
        let processor = Arc::clone(&self.processor);
        let step = match self.req.execution {
            Execution::MapReduce => {
                tokio::spawn(async move { processor.reduce(ctx, results).await })
            }
            Execution::Broadcast => tokio::spawn(async move { processor.post(ctx, results).await }),
            _ => return by_counts(&results),
        };
        let mut step = crate::tracker::AbortOnDrop(step);
        loop {
            tokio::select! {
                joined = &mut step.0 => return match joined {
                    Ok(result) => result,
                    Err(e) => ProcessResult::failed(format!("the last step panicked: {e}")),
                },
                () = self.cancel.cancelled() => return ProcessResult::failed("stopped"),
                // The tasks are over, but `instance tasks` still asks, and a late report is
                // told the attempt is over.
                Some(event) = self.rx.recv() => match event {
                    Event::List { after, limit, reply } => {
                        let page = self
                            .store
                            .page(after, limit)
                            .map_err(|e| ErrorBody::internal(e.to_string()));
                        let _ = reply.send(page);
                    }
                    Event::Report { reply, .. } => {
                        let _ = reply.send(Ok(TaskReportAck { stop: true }));
                    }
                    _ => {}
                },
            }
        }
    }

    /// Asks the owner for its view of the live workers, unless a question is on its way; the
    /// answer comes back as [`Event::Cluster`], so that the loop goes on meanwhile.
    fn ask_cluster(&mut self) {
        if self.refreshing {
            return;
        }
        self.refreshing = true;
        let link = Arc::clone(&self.agent.link);
        let inbox = self.inbox.clone();
        let job_id = self.req.job_id;
        let processor = self.req.processor.clone();
        tokio::spawn(async move {
            let reply = cluster(&link, job_id, &processor).await;
            inbox.send(Event::Cluster(reply)).await;
        });
    }

    /// Follows the owner's view of the live workers: the tasks of those missing from it for
    /// [`MISSING_GRACE`] run again (a broadcast task fails), and those that joined take tasks
    /// (not in a broadcast).
    fn on_cluster(&mut self, reply: Result<Vec<String>, CallError>) -> Result<(), String> {
        self.refreshing = false;
        let live: HashSet<String> = match reply {
            Ok(workers) => workers.into_iter().collect(),
            Err(e) => {
                debug!(
                    instance = self.req.instance_id,
                    "cluster query failed: {e}; keeping the view"
                );
                return Ok(());
            }
        };
        let now = Instant::now();
        let mut lost = Vec::new();
        for (worker, peer) in &mut self.peers {
            if live.contains(worker) {
                peer.missing_since = None;
            } else {
                let since = *peer.missing_since.get_or_insert(now);
                if now.duration_since(since) >= MISSING_GRACE {
                    lost.push(worker.clone());
                }
            }
        }
        for worker in lost {
            if let Some(peer) = self.peers.remove(&worker) {
                self.lose(&worker, peer.in_flight.into_iter().collect(), "worker lost")?;
            }
        }
        if !self.req.execution.pins_tasks() {
            for worker in live {
                self.peers.entry(worker).or_insert_with(Peer::new);
            }
        }
        Ok(())
    }

    /// A worker that holds tasks and has gone silent dropped them: they run elsewhere (a
    /// broadcast task fails), and it is left out for a while.
    fn check_silence(&mut self) -> Result<(), String> {
        let now = Instant::now();
        let silent: Vec<String> = self
            .peers
            .iter()
            .filter(|(_, p)| {
                !p.in_flight.is_empty() && now.duration_since(p.last_heard) >= PEER_SILENCE
            })
            .map(|(w, _)| w.clone())
            .collect();
        for worker in silent {
            let ids: Vec<u64> = match self.peers.get_mut(&worker) {
                Some(peer) => {
                    peer.sit_out_until = Some(now + SIT_OUT);
                    peer.last_heard = now;
                    peer.in_flight.drain().collect()
                }
                None => continue,
            };
            self.lose(&worker, ids, "worker silent")?;
        }
        Ok(())
    }

    /// Tasks a worker will not report: they run again elsewhere, or (broadcast) fail.
    fn lose(&mut self, worker: &str, ids: Vec<u64>, why: &str) -> Result<(), String> {
        if ids.is_empty() {
            return Ok(());
        }
        warn!(
            instance = self.req.instance_id,
            worker,
            tasks = ids.len(),
            "{why}; its unfinished tasks {}",
            if self.req.execution.pins_tasks() {
                "fail"
            } else {
                "run elsewhere"
            }
        );
        self.info(format!("{why}: {worker}, {} unfinished tasks", ids.len()));
        let result = if self.req.execution.pins_tasks() {
            self.store.fail(&ids, &format!("{why}: {worker}"))
        } else {
            self.store.requeue(&ids)
        };
        result.map_err(|e| e.to_string())
    }

    /// Hands waiting tasks to workers with room in their window.
    fn dispatch(&mut self) -> Result<(), String> {
        if self.req.execution.pins_tasks() || self.store.pending() == 0 {
            return Ok(());
        }
        let now = Instant::now();
        let ready: Vec<String> = self
            .peers
            .iter()
            .filter(|(_, p)| {
                !p.sending
                    && p.in_flight.len() < WINDOW
                    && p.sit_out_until.is_none_or(|until| now >= until)
            })
            .map(|(w, _)| w.clone())
            .collect();
        // The waiting tasks are shared among the ready workers, so that a small map does not
        // go to the first of them whole.
        let share = self.store.pending().div_ceil(ready.len().max(1)).min(BATCH);
        for worker in ready {
            if self.store.pending() == 0 {
                break;
            }
            let room = WINDOW - self.peers[&worker].in_flight.len();
            let tasks = self
                .store
                .take(room.min(share), &worker)
                .map_err(|e| e.to_string())?;
            self.send(&worker, tasks);
        }
        Ok(())
    }

    /// Sends a broadcast task (again) to its own worker.
    fn send_pinned(&mut self, id: u64) -> Result<(), String> {
        let Some(worker) = self.pinned.get(&id).cloned() else {
            return Ok(());
        };
        let tasks = self
            .store
            .take_ids(&[id], &worker)
            .map_err(|e| e.to_string())?;
        self.send(&worker, tasks);
        Ok(())
    }

    fn batch(&self, tasks: Vec<Task>) -> TaskBatch {
        TaskBatch {
            master: self.agent.worker_id.clone(),
            instance_id: self.req.instance_id,
            attempt: self.req.attempt,
            job_id: self.req.job_id,
            job_name: self.req.job_name.clone(),
            processor: self.req.processor.clone(),
            config: self.req.config.clone(),
            job_params: self.req.job_params.clone(),
            instance_params: self.req.instance_params.clone(),
            task_timeout_ms: self.req.timeout_ms,
            map: self.req.execution.has_root(),
            container: self.req.container.clone(),
            tasks,
        }
    }

    /// Sends tasks to a worker in messages under the size limit, one after the other; the
    /// answer comes back as [`Event::Sent`].
    fn send(&mut self, worker: &str, tasks: Vec<Task>) {
        if tasks.is_empty() {
            return;
        }
        let peer = self
            .peers
            .entry(worker.to_owned())
            .or_insert_with(Peer::new);
        peer.sending = true;
        peer.in_flight.extend(tasks.iter().map(|t| t.id));
        self.used.insert(worker.to_owned());
        let mut messages = Vec::new();
        let mut current = Vec::new();
        let mut bytes = 0;
        for task in tasks {
            // JSON may double a text's bytes when it escapes them.
            let param = task.shard.as_ref().map_or(0, |s| s.param.len());
            let size = 2 * (task.payload.len() + task.name.len() + param) + 96;
            if !current.is_empty()
                && (current.len() >= MAX_TASKS_PER_MESSAGE
                    || bytes + size > MAX_TASK_BYTES_PER_MESSAGE)
            {
                messages.push(self.batch(std::mem::take(&mut current)));
                bytes = 0;
            }
            bytes += size;
            current.push(task);
        }
        messages.push(self.batch(current));
        let link = Arc::clone(&self.agent.link);
        let inbox = self.inbox.clone();
        let worker = worker.to_owned();
        tokio::spawn(async move {
            // The messages go one after the other; those after the first that is not taken
            // are not sent, and only their tasks (and its) are given back.
            let mut refused = Vec::new();
            let mut error = None;
            for batch in messages {
                if error.is_some() {
                    refused.extend(batch.tasks.iter().map(|t| t.id));
                    continue;
                }
                let ids: Vec<u64> = batch.tasks.iter().map(|t| t.id).collect();
                let call = TaskCall::Run(Box::new(batch));
                if let Err(e) = link
                    .call_worker::<_, TaskBatchAck>(
                        &worker,
                        WorkerEndpoint::Task,
                        &call,
                        SEND_TIMEOUT,
                    )
                    .await
                {
                    refused.extend(ids);
                    error = Some(e);
                }
            }
            inbox
                .send(Event::Sent {
                    worker,
                    refused,
                    error,
                })
                .await;
        });
    }

    fn handle(&mut self, event: Event) -> Result<(), String> {
        match event {
            Event::Report { report, reply } => {
                let answer = self.apply(report);
                // The task store failed: the attempt cannot go on.
                let fatal = answer
                    .as_ref()
                    .err()
                    .filter(|e| e.code == ErrorCode::Internal)
                    .map(|e| e.message.clone());
                let _ = reply.send(answer);
                if let Some(message) = fatal {
                    return Err(message);
                }
            }
            Event::Map {
                parent,
                name,
                payloads,
            } => self
                .add_map(parent, name, payloads)
                .map_err(|e| e.message)?,
            Event::RootDone(result) => {
                if !result.success {
                    warn!(
                        instance = self.req.instance_id,
                        "root task failed: {}", result.message
                    );
                }
                self.root_result = Some(result);
            }
            Event::Sent {
                worker,
                refused,
                error,
            } => {
                let still: Vec<u64> = match self.peers.get_mut(&worker) {
                    Some(peer) => {
                        peer.sending = false;
                        if error.is_none() {
                            peer.last_heard = Instant::now();
                        } else {
                            peer.sit_out_until = Some(Instant::now() + SIT_OUT);
                        }
                        refused
                            .iter()
                            .filter(|id| peer.in_flight.remove(id))
                            .copied()
                            .collect()
                    }
                    // A worker already counted lost: its tasks were given back then.
                    None => Vec::new(),
                };
                if let Some(e) = error {
                    self.lose(
                        &worker,
                        still,
                        &format!("worker did not take its tasks ({e})"),
                    )?;
                }
            }
            Event::Cluster(reply) => self.on_cluster(reply)?,
            Event::List {
                after,
                limit,
                reply,
            } => {
                let page = self
                    .store
                    .page(after, limit)
                    .map_err(|e| ErrorBody::internal(e.to_string()));
                let _ = reply.send(page);
            }
        }
        Ok(())
    }

    fn add_map(
        &mut self,
        _parent: u64,
        name: String,
        payloads: Vec<String>,
    ) -> Result<(), ErrorBody> {
        if !self.req.execution.has_root() {
            return Err(ErrorBody::new(
                ErrorCode::InvalidArgument,
                "only map and map-reduce tasks may emit sub-tasks",
            ));
        }
        let tasks = payloads
            .into_iter()
            .map(|payload| NewTask {
                name: name.clone(),
                payload,
                shard: None,
            })
            .collect();
        self.store
            .add(tasks)
            .map(|_| ())
            .map_err(|e| ErrorBody::internal(e.to_string()))
    }

    /// Applies a task worker's report: sub-tasks first (a task's children exist before its
    /// result counts), then results (only for the attempt each task is at on that worker),
    /// then log lines.
    fn apply(&mut self, report: TaskReport) -> Result<TaskReportAck, ErrorBody> {
        if report.attempt != self.req.attempt {
            return Ok(TaskReportAck { stop: true });
        }
        let worker = report.worker_id;
        if let Some(peer) = self.peers.get_mut(&worker) {
            peer.last_heard = Instant::now();
            if report.seq <= peer.last_seq {
                // Sent again because its answer was lost: it was applied already.
                return Ok(TaskReportAck { stop: false });
            }
            peer.last_seq = report.seq;
        }
        for map in &report.maps {
            let allowed = self
                .store
                .may_map(map.parent, map.parent_attempt, &worker)
                .map_err(|e| ErrorBody::internal(e.to_string()))?;
            if !allowed {
                return Err(ErrorBody::unauthorized(format!(
                    "task {} attempt {} does not run on worker {worker}: it may not emit sub-tasks",
                    map.parent, map.parent_attempt
                )));
            }
        }
        for map in report.maps {
            self.add_map(map.parent, map.name, map.payloads)?;
        }
        if !report.results.is_empty() {
            let applied = self
                .store
                .finish(&worker, &report.results)
                .map_err(|e| ErrorBody::internal(e.to_string()))?;
            let mut stale = 0;
            for (result, applied) in report.results.iter().zip(applied) {
                if applied == Applied::Stale {
                    stale += 1;
                    continue;
                }
                if let Some(peer) = self.peers.get_mut(&worker) {
                    peer.in_flight.remove(&result.id);
                }
                if let Applied::Retry { id } = applied
                    && self.req.execution.pins_tasks()
                {
                    self.send_pinned(id).map_err(ErrorBody::internal)?;
                }
            }
            if stale > 0 {
                debug!(instance = self.req.instance_id, %worker, stale, "stale task results ignored");
            }
        }
        for line in report.logs {
            self.agent.logs.push(LogLine {
                instance_id: self.req.instance_id,
                attempt: self.req.attempt,
                ..line
            });
        }
        Ok(TaskReportAck { stop: false })
    }

    /// Tells every worker that was given tasks that the attempt is over, so that they drop
    /// what is left of it. Detached: the master's own end does not wait for slow workers, and
    /// an abort of the master's task does not cut it short.
    fn stop_peers(&mut self) {
        let stop = TaskCall::Stop(TaskStop {
            master: self.agent.worker_id.clone(),
            instance_id: self.req.instance_id,
            attempt: self.req.attempt,
        });
        let workers: Vec<String> = self.used.drain().collect();
        let link = Arc::clone(&self.agent.link);
        let instance = self.req.instance_id;
        tokio::spawn(async move {
            let calls = workers.iter().map(|worker| {
                let (link, stop) = (&link, &stop);
                async move {
                    if let Err(e) = link
                        .call_worker::<_, TaskBatchAck>(
                            worker,
                            WorkerEndpoint::Task,
                            stop,
                            SEND_TIMEOUT,
                        )
                        .await
                    {
                        debug!(%worker, "task stop not answered: {e}");
                    }
                }
            });
            futures::future::join_all(calls).await;
            info!(instance, "master ended");
        });
    }
}
