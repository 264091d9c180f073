#!/usr/bin/env python3
"""Celery + Redis peer benchmark for Rota's harness.

    python celery_bench.py throughput --seconds 10
    python celery_bench.py latency --rate 100 --seconds 10

One JSON object on stdout; human notes on stderr.  The script starts its own Celery worker
(`python -m celery -A celery_bench worker ...`) as a subprocess against a Redis broker and a
Redis result backend on a dedicated DB (FLUSHDB at start and end), and always stops it.

What is measured (end to end, from the producer's side):

* The task is `noop(sent_at)`; it returns at once with `{"sent_at", "started_at"}`, where
  `started_at = time.time()` is read in the worker at the start of the task body.
* A task counts as done when its SUCCESS result is stored in the Redis result backend.  The
  backend writes a result as one MULTI/EXEC pipeline `SET celery-task-meta-<id>` +
  `PUBLISH celery-task-meta-<id>`, so when the producer receives the PUBLISH the result is
  readable.  The producer listens with one PSUBSCRIBE on the run's key prefix (instead of
  Celery's per-task SUBSCRIBE/UNSUBSCRIBE of AsyncResult.get(), which costs two extra Redis
  commands per task and producer CPU; the worker side is unchanged).
* Latency "start" = started_at - trigger; "stored" = date_done - trigger, where date_done is the
  backend's own timestamp in the stored result (microsecond ISO time taken in the worker process
  just before the SET+PUBLISH pipeline, same host clock as the producer); "observed" = the
  producer's receipt of the PUBLISH - trigger (adds the pub/sub hop and producer scheduling).
* Latency mode: the trigger is the *scheduled* send time (t0 + i/rate on a monotonic clock,
  mapped to wall time), so a producer that falls behind shows up in the latencies (no
  coordinated omission); how far behind the sends were is reported separately.
* Throughput mode: up to --max-in-flight tasks outstanding, refilled as results arrive, for
  --seconds; rate = completed / (first send -> last result received).
"""

from __future__ import annotations

import os
import time

# ---------------------------------------------------------------------------------------------
# The Celery app (imported by the worker subprocess too, via `-A celery_bench`).  Configured
# from environment variables that the parent sets for the worker.
# ---------------------------------------------------------------------------------------------
from celery import Celery

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/15"
QUEUE = "peerbench"
TASK_NAME = "peerbench.noop"

_redis_url = os.environ.get("PEERBENCH_REDIS_URL", DEFAULT_REDIS_URL)
_role = os.environ.get("PEERBENCH_ROLE", "producer")

app = Celery("peerbench", broker=_redis_url)
app.conf.update(
    task_default_queue=QUEUE,
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    broker_connection_retry_on_startup=True,
    worker_prefetch_multiplier=int(os.environ.get("PEERBENCH_PREFETCH", "4")),
    worker_hijack_root_logger=False,
    result_backend_transport_options={
        "global_keyprefix": os.environ.get("PEERBENCH_PREFIX", "peerbench-"),
    },
)
if _role == "worker":
    # Only the worker stores results.  The producer has no result backend configured, so
    # send_task() does not SUBSCRIBE per task; the producer reads results through one
    # PSUBSCRIBE instead (see the module docstring).
    app.conf.result_backend = _redis_url


@app.task(name=TASK_NAME)
def noop(sent_at):
    return {"sent_at": sent_at, "started_at": time.time()}


# ---------------------------------------------------------------------------------------------
# The benchmark driver (producer side).
# ---------------------------------------------------------------------------------------------
import argparse  # noqa: E402
import atexit  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import uuid  # noqa: E402
from datetime import datetime  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
META = "celery-task-meta-"
REDIS_START_HINT = (
    'redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" '
    "--appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log"
)

# Chosen by comparing pools on the 2-core benchmark machine (see README.md): for a no-op task
# the solo pool (tasks run in the worker's main process, no pool IPC) completed the most tasks
# per second and had the lowest latency, with prefork --concurrency=2/3 close behind and the
# threads pool last.  --pool/--concurrency select another.
DEFAULT_POOL = "solo"
DEFAULT_CONCURRENCY = 2  # for prefork/threads; solo is always 1
DEFAULT_PREFETCH = 4


def note(msg):
    print(f"[celery-bench] {msg}", file=sys.stderr, flush=True)


def percentile(sorted_vals, p):
    """Nearest-rank percentile of an ascending list (p in 0..100)."""
    if not sorted_vals:
        return None
    k = max(0, min(len(sorted_vals) - 1, int(-(-p * len(sorted_vals) // 100)) - 1))
    return sorted_vals[k]


def summary_ms(vals_s):
    v = sorted(vals_s)
    if not v:
        return {"n": 0, "p50": None, "p99": None, "p999": None, "max": None, "mean": None}
    r = lambda x: round(x * 1000.0, 3)  # noqa: E731
    return {
        "n": len(v),
        "p50": r(percentile(v, 50)),
        "p99": r(percentile(v, 99)),
        "p999": r(percentile(v, 99.9)),
        "max": r(v[-1]),
        "mean": r(sum(v) / len(v)),
    }


def group_cpu_seconds(pgid):
    """utime+stime (s) of the live processes in a process group, from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                st = f.read()
        except OSError:
            continue
        fields = st[st.rindex(")") + 2:].split()
        if int(fields[2]) == pgid:  # field 5 (pgrp), counted after "(comm) "
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / tick


def machine_busy_seconds():
    """CPU seconds all CPUs have spent busy (not idle/iowait) since boot, from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    # user nice system idle iowait irq softirq steal [guest guest_nice: already in user/nice]
    return (v[0] + v[1] + v[2] + v[5] + v[6] + (v[7] if len(v) > 7 else 0)) / os.sysconf(
        "SC_CLK_TCK")


class Worker:
    """The Celery worker subprocess; stopped on every exit path."""

    def __init__(self, redis_url, prefix, pool, concurrency, prefetch):
        self.redis_url, self.prefix = redis_url, prefix
        self.pool, self.concurrency, self.prefetch = pool, concurrency, prefetch
        self.proc = None
        self.log = None

    def start(self):
        env = dict(os.environ)
        env.update(
            PEERBENCH_ROLE="worker",
            PEERBENCH_REDIS_URL=self.redis_url,
            PEERBENCH_PREFIX=self.prefix,
            PEERBENCH_PREFETCH=str(self.prefetch),
            PYTHONDONTWRITEBYTECODE="1",  # leave no __pycache__ in the repo
            PYTHONPATH=HERE + os.pathsep + env.get("PYTHONPATH", ""),
        )
        cmd = [
            sys.executable, "-m", "celery", "-A", "celery_bench", "worker",
            f"--pool={self.pool}", f"--concurrency={self.concurrency}",
            "--loglevel=WARNING", "-Q", QUEUE,
            "--without-gossip", "--without-mingle", "--without-heartbeat",
            "-n", f"peerbench-{os.getpid()}@%h",
        ]
        # Anonymous file: nothing is left behind even if this driver is SIGKILLed.
        self.cmd = cmd
        self.log = tempfile.TemporaryFile(prefix="peerbench-worker-")
        note(f"starting worker: {' '.join(cmd[1:])}")

        def child_setup():
            # If this driver dies without cleaning up (SIGKILL), the worker gets SIGTERM.
            try:
                import ctypes
                ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
            except Exception:
                pass

        self.proc = subprocess.Popen(
            cmd, cwd=HERE, env=env, stdin=subprocess.DEVNULL, stdout=self.log,
            stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=child_setup)

    def cpu_seconds(self):
        return group_cpu_seconds(self.proc.pid) if self.alive() else None

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, n=30):
        try:
            self.log.flush()
            self.log.seek(0)
            lines = self.log.read().decode(errors="replace").splitlines()
            return "\n".join(lines[-n:])
        except Exception:
            return ""

    def stop(self):
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        pgid = proc.pid  # start_new_session: the worker leads its own process group
        if proc.poll() is None:
            try:
                proc.send_signal(signal.SIGTERM)  # warm shutdown: main process stops its pool
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                note("worker did not stop within 10 s of SIGTERM; killing its process group")
            except ProcessLookupError:
                pass
        try:  # whatever is left of the group (pool children), including after a clean stop
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        if self.log is not None:
            self.log.close()
            self.log = None


class Results:
    """Receives stored results through one PSUBSCRIBE and matches them to sent tasks."""

    def __init__(self, rclient, prefix):
        self.r = rclient
        self.pattern = f"{prefix}{META}*"
        self.cut = len(prefix) + len(META)
        self.lock = threading.Lock()
        self.pending = {}          # task_id -> phase tag
        self.on_done = None        # callable(phase, task_id, meta, recv_wall)
        self.stop = threading.Event()
        self.error = None
        self.unknown = 0
        self.ps = self.r.pubsub()
        self.ps.psubscribe(self.pattern)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:  # wait for the subscription to be in place
            m = self.ps.get_message(timeout=0.5)
            if m and m["type"] == "psubscribe":
                break
        else:
            raise RuntimeError("PSUBSCRIBE was not confirmed by Redis")
        self.thread = threading.Thread(target=self._run, name="results", daemon=True)
        self.thread.start()

    def expect(self, task_id, phase):
        with self.lock:
            self.pending[task_id] = phase

    def outstanding(self):
        with self.lock:
            return len(self.pending)

    def _run(self):
        try:
            while not self.stop.is_set():
                m = self.ps.get_message(timeout=0.2)
                if not m or m["type"] != "pmessage":
                    continue
                recv = time.time()
                tid = m["channel"][self.cut:].decode()
                with self.lock:
                    phase = self.pending.pop(tid, None)
                if phase is None:
                    self.unknown += 1
                    continue
                self.on_done(phase, tid, json.loads(m["data"]), recv)
        except Exception as e:  # surfaced by the main thread
            if not self.stop.is_set():
                self.error = e

    def close(self):
        self.stop.set()
        self.thread.join(timeout=2)
        try:
            self.ps.close()
        except Exception:
            pass


def parse_date_done(s):
    return datetime.fromisoformat(s).timestamp()


class Bench:
    def __init__(self, args):
        import redis as redis_py

        self.args = args
        self.r = redis_py.Redis.from_url(args.redis_url)
        try:
            self.r.ping()
        except Exception as e:
            raise SystemExit(
                f"celery_bench: error: Redis at {args.redis_url} is not reachable ({e}).\n"
                f"Start it with: {REDIS_START_HINT}")
        self.prefix = f"peerbench-{uuid.uuid4().hex[:8]}-"
        self.r.flushdb()
        self.worker = Worker(args.redis_url, self.prefix, args.pool, args.concurrency,
                             args.prefetch)
        self.results = None
        self.producer = None

        # Per-phase accounting, filled by the results thread.
        self.cv = threading.Condition()
        self.done = {"warmup": 0, "run": 0}
        self.failures = 0
        self.start_lat, self.stored_lat, self.observed_lat = [], [], []
        self.last_recv = None
        self.last_date_done = None

    # -- lifecycle ------------------------------------------------------------------------------
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.cleanup()
        return False

    def cleanup(self):
        if self.results is not None:
            self.results.close()
            self.results = None
        if self.producer is not None:
            try:
                self.producer.release()
            except Exception:
                pass
            self.producer = None
        if self.worker is not None:
            self.worker.stop()
            self.worker = None
        try:
            self.r.flushdb()
        except Exception:
            pass

    # -- results ---------------------------------------------------------------------------------
    def _on_done(self, phase, tid, meta, recv):
        ok = meta.get("status") == "SUCCESS"
        if phase == "run":
            if ok:
                res = meta["result"]
                trig = res["sent_at"]
                self.start_lat.append(res["started_at"] - trig)
                dd = parse_date_done(meta["date_done"])
                self.stored_lat.append(dd - trig)
                self.observed_lat.append(recv - trig)
                self.last_recv = recv
                if self.last_date_done is None or dd > self.last_date_done:
                    self.last_date_done = dd
            else:
                self.failures += 1
        with self.cv:
            self.done[phase] += 1
            self.cv.notify_all()
        if phase == "run" and self.sem is not None:
            self.sem.release()

    sem = None

    def send(self, sent_at, phase):
        tid = str(uuid.uuid4())
        self.results.expect(tid, phase)
        app.send_task(TASK_NAME, args=[sent_at], task_id=tid, producer=self.producer,
                      queue=QUEUE)

    def wait_done(self, phase, target, timeout):
        deadline = time.monotonic() + timeout
        with self.cv:
            while self.done[phase] < target:
                left = deadline - time.monotonic()
                if left <= 0 or not self.worker.alive() or self.results.error:
                    break
                self.cv.wait(min(left, 0.5))
            return self.done[phase]

    def check(self):
        if self.results.error:
            raise RuntimeError(f"result listener failed: {self.results.error!r}")
        if not self.worker.alive():
            raise RuntimeError("worker exited:\n" + self.worker.log_tail())

    # -- phases ----------------------------------------------------------------------------------
    def start(self):
        self.results = Results(self.r, self.prefix)
        self.results.on_done = self._on_done
        self.producer = app.producer_pool.acquire(block=True)
        self.worker.start()
        self._worker_cmd = self.worker.cmd
        # Warm-up: also the readiness check (the first result arrives once the worker consumes).
        n = self.args.warmup
        t = time.monotonic()
        self.send(time.time(), "warmup")
        if self.wait_done("warmup", 1, self.args.start_timeout) < 1:
            self.check()
            raise RuntimeError(f"worker not ready within {self.args.start_timeout} s:\n"
                               + self.worker.log_tail())
        note(f"worker ready after {time.monotonic() - t:.2f} s; warming up with {n} tasks")
        for _ in range(n):
            self.send(time.time(), "warmup")
        if self.wait_done("warmup", n + 1, 30) < n + 1:
            self.check()
            raise RuntimeError("warm-up tasks did not complete within 30 s")
        time.sleep(0.2)

    def cpu_snapshot(self):
        try:
            info = self.r.info("cpu")
            rcpu = info["used_cpu_user"] + info["used_cpu_sys"]
        except Exception:
            rcpu = None
        return (time.process_time(), self.worker.cpu_seconds(), rcpu, machine_busy_seconds(),
                time.monotonic())

    def cpu_usage(self, before):
        after = self.cpu_snapshot()
        names = ("producer", "worker", "redis", "machine")
        d = {}
        for name, b, a in zip(names, before, after):
            if a is not None and b is not None:
                d[name] = a - b
        out = {k: round(v, 2) for k, v in d.items() if k != "machine"}
        if len(d) == 4:
            # CPU used by everything else on the machine meanwhile: not zero means the figures
            # were taken on a shared machine.
            out["other"] = round(max(0.0, d["machine"] - d["producer"] - d["worker"]
                                     - d["redis"]), 2)
        out["wall"] = round(after[4] - before[4], 2)
        return out

    @property
    def worker_cmd(self):
        return " ".join(["celery"] + self._worker_cmd[3:]) if self._worker_cmd else None

    _worker_cmd = None

    def throughput(self):
        a = self.args
        self.sem = threading.BoundedSemaphore(a.max_in_flight)
        sent = 0
        cpu0 = self.cpu_snapshot()
        t0_wall = time.time()
        t0 = time.monotonic()
        stop_at = t0 + a.seconds
        while True:
            now = time.monotonic()
            if now >= stop_at:
                break
            if not self.sem.acquire(timeout=min(0.1, stop_at - now)):
                self.check()
                continue
            self.send(time.time(), "run")
            sent += 1
        send_end = time.monotonic()
        got = self.wait_done("run", sent, a.drain_timeout)
        if got < sent:
            self.check()
        cpu = self.cpu_usage(cpu0)
        if got < sent:
            note(f"warning: {sent - got} results missing after {a.drain_timeout} s")
        end_wall = self.last_recv or time.time()
        elapsed = end_wall - t0_wall
        completed = len(self.start_lat)
        note(f"throughput: sent {sent} in {send_end - t0:.2f} s, completed {completed} "
             f"in {elapsed:.2f} s (first send -> last result received)")
        return {
            "scenario": "throughput",
            "completed": completed,
            "sent": sent,
            "missing": sent - got,
            "failed": self.failures,
            "seconds": round(elapsed, 4),
            "rate_per_s": round(completed / elapsed, 1) if elapsed > 0 else None,
            "send_window_s": a.seconds,
            "max_in_flight": a.max_in_flight,
            "stored_seconds": round(self.last_date_done - t0_wall, 4)
            if self.last_date_done else None,
            "cpu_seconds": cpu,
        }

    def latency(self):
        a = self.args
        rate, n = a.rate, int(round(a.rate * a.seconds))
        period = 1.0 / rate
        lags = []
        cpu0 = self.cpu_snapshot()
        t0 = time.monotonic() + 0.05
        t0_wall = time.time() + (t0 - time.monotonic())
        for i in range(n):
            due = t0 + i * period
            now = time.monotonic()
            if due > now:
                # No busy-wait: on 2 cores a spinning producer would steal CPU from the worker
                # and hold the GIL from the results thread.  Wake-up overshoot (typically well
                # under 1 ms) is included in the latencies and shown in send_lag_ms.
                time.sleep(due - now)
            lag = time.monotonic() - due
            lags.append(lag)
            self.send(t0_wall + i * period, "run")
            if (i & 255) == 0 and i:
                self.check()
        send_end = time.monotonic()
        backlog = self.results.outstanding()
        got = self.wait_done("run", n, a.drain_timeout)
        if got < n:
            self.check()
        cpu = self.cpu_usage(cpu0)
        if got < n:
            note(f"warning: {n - got} results missing after {a.drain_timeout} s")
        send_span = send_end - t0
        completed = len(self.start_lat)
        # Achieved send rate over the actual first..last send (each send happens at due + lag).
        actual_span = (n - 1) * period + lags[-1] - lags[0]
        achieved = (n - 1) / actual_span if n > 1 and actual_span > 0 else None
        completed_rate = None
        if completed > 1 and self.last_recv:
            completed_rate = completed / (self.last_recv - t0_wall)
        behind_1 = sum(1 for x in lags if x > 0.001)
        behind_10 = sum(1 for x in lags if x > 0.010)
        late_start = sum(1 for x in self.start_lat if x > a.late_ms / 1000.0)
        note(f"latency: offered {rate}/s for {a.seconds} s: sent {n} in {send_span:.2f} s, "
             f"completed {completed}; sends >1 ms behind schedule: {behind_1}; "
             f"tasks started >{a.late_ms} ms after their trigger: {late_start}; "
             f"not yet stored when the last was sent: {backlog}")
        return {
            "scenario": "latency",
            "completed": completed,
            "sent": n,
            "missing": n - got,
            "failed": self.failures,
            "seconds": a.seconds,
            "send_span_s": round(send_span, 4),
            "offered_rate_per_s": rate,
            "rate_per_s": round(achieved, 2) if achieved else None,
            "completed_rate_per_s": round(completed_rate, 2) if completed_rate else None,
            "behind": {
                "send_lag_gt_1ms": behind_1,
                "send_lag_gt_10ms": behind_10,
                "send_lag_ms": summary_ms(lags),
                "late_ms": a.late_ms,
                "start_later_than_late_ms": late_start,
                "outstanding_at_last_send": backlog,
            },
            "cpu_seconds": cpu,
        }


def main(argv=None):
    p = argparse.ArgumentParser(description="Celery+Redis peer benchmark (JSON on stdout).")
    p.add_argument("scenario", choices=["throughput", "latency"])
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--rate", type=float, default=100.0, help="latency: offered tasks per second")
    p.add_argument("--pool", default=DEFAULT_POOL,
                   choices=["prefork", "threads", "solo"])
    p.add_argument("--concurrency", type=int, default=None,
                   help=f"worker concurrency (default {DEFAULT_CONCURRENCY}; 1 for solo)")
    p.add_argument("--prefetch", type=int, default=DEFAULT_PREFETCH,
                   help="worker_prefetch_multiplier")
    p.add_argument("--max-in-flight", type=int, default=2000,
                   help="throughput: outstanding tasks kept in flight")
    p.add_argument("--warmup", type=int, default=200, help="warm-up tasks (not measured)")
    p.add_argument("--drain-timeout", type=float, default=60.0,
                   help="seconds to wait for results after the last send")
    p.add_argument("--start-timeout", type=float, default=60.0)
    p.add_argument("--late-ms", type=int, default=100,
                   help="latency: count tasks whose start latency exceeds this")
    p.add_argument("--redis-url", default=os.environ.get("PEERBENCH_REDIS_URL", DEFAULT_REDIS_URL),
                   help="broker and result backend; its DB is FLUSHDB'd at start and end")
    args = p.parse_args(argv)
    if args.pool == "solo":
        args.concurrency = 1  # the solo pool runs one task at a time whatever is asked
    elif args.concurrency is None:
        args.concurrency = DEFAULT_CONCURRENCY
    if args.seconds <= 0 or args.rate <= 0:
        p.error("--seconds and --rate must be positive")

    app.conf.broker_url = args.redis_url

    # SIGTERM/SIGHUP behave like Ctrl-C: unwind through the cleanup below.
    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)

    import celery
    import kombu
    import redis as redis_py

    load_at_start = round(os.getloadavg()[0], 2)
    if load_at_start > 0.5 * (os.cpu_count() or 1):
        note(f"warning: 1-minute load average is {load_at_start} on {os.cpu_count()} CPUs; "
             "other work on this machine will lower Celery's figures")
    bench = None
    try:
        bench = Bench(args)
        atexit.register(bench.cleanup)  # belt and braces; cleanup is idempotent
        with bench:
            bench.start()
            out = bench.throughput() if args.scenario == "throughput" else bench.latency()
    except KeyboardInterrupt:
        note("interrupted; worker stopped" if bench else "interrupted")
        return 130
    except RuntimeError as e:
        note(f"error: {e}")
        return 1

    try:
        redis_version = bench.r.info("server").get("redis_version")
    except Exception:
        redis_version = None
    result = {
        "system": "celery+redis",
        "scenario": out.pop("scenario"),
        "celery_version": celery.__version__,
        "kombu_version": kombu.__version__,
        "redis_py_version": redis_py.__version__,
        "redis_server_version": redis_version,
        "python_version": platform.python_version(),
        "worker_command": bench.worker_cmd,
        "pool": args.pool,
        "concurrency": args.concurrency,
        "prefetch_multiplier": args.prefetch,
        "cpus": os.cpu_count(),
        "loadavg_1m_at_start": load_at_start,
    }
    result.update(out)
    result["latency_ms"] = {
        "start": summary_ms(bench.start_lat),
        "stored": summary_ms(bench.stored_lat),
        "observed": summary_ms(bench.observed_lat),
    }
    result["notes"] = {
        "start": "task body's time.time() - trigger",
        "stored": "result date_done (backend timestamp, taken in the worker just before the "
                  "SET+PUBLISH pipeline) - trigger",
        "observed": "producer received the result's PUBLISH (result readable) - trigger",
        "trigger": "scheduled send time (latency) / send time (throughput)",
        "cpu_seconds": "CPU used during the measured phase by this producer process, the "
                       "worker's process group, redis-server and all other processes "
                       "('other', from /proc/stat), over 'wall' seconds",
    }
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
