"""Run the engine's queries in several processes, so they use more than one core.

The engine's per-record work is Python, held by one interpreter lock; ksqlDB
runs each persistent query as its own Kafka Streams application, and so can
we. The server's own `EngineRuntime` is worker 0: it takes the statements,
places each new query on a worker (`EngineRuntime._new_owner`: worker 0
takes the projections that copy values, the others the rest in turn) and
records it in the command topic. `WorkerPool` starts workers 1..n-1, each an
`EngineRuntime` in a process of its own that follows the command topic and
runs its queries with its own input positions, transactions and changelog
(see `runtime.EngineRuntime`). Worker 0's consumer reads the source topics for
all of them: each worker subscribes to the partitions it reads, from its
positions, and worker 0 hands it every fetch over a pipe of its own.

    pool = WorkerPool(cluster, runtime, workers=2)   # runtime: worker 0
    pool.start()
    pool.statuses()      # what each worker last reported (`EngineRuntime.status()`)
    pool.stop()

A worker reports its status and its subscriptions over a control pipe,
gets over it each statement worker 0 records, and stops when the pipe
closes, so a killed server takes its workers with it. A worker that dies is
started again (and subscribes again from what it committed).
"""

from __future__ import annotations

import dataclasses
import fcntl
import gc
import logging
import multiprocessing
import os
import pickle
import threading
import time
from multiprocessing.connection import Connection, wait
from typing import Any

from survey_kit.cluster import Cluster

from .runtime import DEFAULT_COMMIT_INTERVAL_MS, EngineRuntime

log = logging.getLogger("survey_kit.ksql.workers")

_REPORT_INTERVAL = 0.2  # seconds between two status reports of a worker
# The cyclic GC's first generation is collected after this many new container objects, not 700: a batch
# of 5,000 records makes ~40,000 that live until the batch is done, and at 700 the collector walked them
# some 60 times per batch (15% of an engine process's time). Cycles are rare here; at most this many
# wait a little longer to be freed.
_GC_YOUNG_THRESHOLD = 100_000
# A worker's feed pipe holds a whole fetch (5,000 records pickled: ~700 KB), so that worker 0 hands it on
# in one write: with Linux's default 64 KB it waited ~10% of its time for the worker's reader to get the
# interpreter lock and drain each piece.
_FEED_PIPE_BYTES = 1 << 20


def settle_heap() -> None:
    """Set up an engine process's cyclic GC once it has started (the server and each worker call it).

    What is loaded by then (modules, the grammar, the clients) lives as long as
    the process: it is frozen out of the collector, whose full collections
    otherwise paused the engine ~40 ms (the p99 update latency); and the young
    generation is collected less often (`_GC_YOUNG_THRESHOLD`).
    """
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(_GC_YOUNG_THRESHOLD, middle, old)


class WorkerPool:
    """Workers 1..`workers`-1 of the engine whose worker 0 is `leader` (the caller's own runtime)."""

    def __init__(self, cluster: Cluster, leader: EngineRuntime, workers: int = 2, commit_interval_ms: int = DEFAULT_COMMIT_INTERVAL_MS):
        self.cluster = cluster
        self.leader = leader
        self.engine_id = leader.engine_id
        self.workers = workers
        self.commit_interval_ms = commit_interval_ms
        self._context = multiprocessing.get_context("spawn")  # no fork: the parent runs threads and Kafka clients
        self._processes: dict[int, tuple[Any, Connection]] = {}
        self._feeds: dict[int, Connection] = {}  # worker -> the sending end of its feed pipe
        self._statuses: dict[int, dict] = {}
        self._stopping = threading.Event()
        self._monitor: threading.Thread | None = None

    def start(self) -> WorkerPool:
        self.leader.on_recorded = self.notify  # the workers apply each statement as soon as it is recorded
        self.leader.on_forward = self.forward
        for worker in range(1, self.workers):
            self._spawn(worker)
        self._monitor = threading.Thread(target=self._watch, name="ksql-workers", daemon=True)
        self._monitor.start()
        return self

    def notify(self, recorded: list[tuple[int, bytes]]) -> None:
        """Pass on the (offset, command) statements one request to worker 0 recorded to every worker."""
        for _, connection in list(self._processes.values()):
            try:
                connection.send(("commands", recorded))
            except OSError:
                pass  # a worker that died: started again, it reads every statement from the topic

    def forward(self, worker: int, generation: int, chunks: list) -> None:
        """Hand worker `worker` records worker 0 fetched (called by worker 0's runtime; waits while the worker is behind)."""
        feed = self._feeds.get(worker)
        if feed is None:
            return
        try:
            feed.send_bytes(pickle.dumps((generation, chunks), protocol=pickle.HIGHEST_PROTOCOL))
        except OSError:
            pass  # a worker that died: started again, it subscribes from what it committed

    def statuses(self) -> list[dict]:
        """The last status of each worker (a worker not heard from yet: not ready, nothing read)."""
        return [self._statuses.get(worker) or {"worker": worker, "ready": False, "records_in": 0}
                for worker in range(1, self.workers)]

    def stop(self, timeout: float = 30.0) -> None:
        """Ask every worker to commit what it processed and stop; kill those that do not within `timeout`."""
        self._stopping.set()
        for _, connection in self._processes.values():
            try:
                connection.send("stop")
            except OSError:
                pass
        deadline = time.monotonic() + timeout
        for worker, (process, connection) in self._processes.items():
            process.join(max(0.1, deadline - time.monotonic()))
            if process.is_alive():
                log.warning("worker %s did not stop within %.0f s; killing it", process.name, timeout)
                process.kill()
                process.join(5)
            connection.close()
            feed = self._feeds.pop(worker, None)
            if feed is not None:
                feed.close()
        if self._monitor is not None:
            self._monitor.join(5)

    def _spawn(self, worker: int) -> None:
        ours, theirs = self._context.Pipe()
        feed_out, feed_in = self._context.Pipe(duplex=False)  # (receiving end, sending end)
        _enlarge_pipe(feed_in)
        process = self._context.Process(
            target=run_worker, name=f"ksql-worker-{worker}", daemon=True,
            # a fresh Cluster: the parent's may hold a registry client, which does not cross processes
            args=(dataclasses.replace(self.cluster), self.engine_id, worker, self.workers, self.commit_interval_ms, theirs, feed_out),
        )
        process.start()
        theirs.close()  # only the worker holds its ends: when the worker dies, ours reads EOF
        feed_out.close()
        self._processes[worker] = (process, ours)
        self._feeds[worker] = feed_in
        log.info("started ksql worker %d of %d (pid %d)", worker, self.workers, process.pid)

    def _watch(self) -> None:
        """Collect the workers' reports and subscriptions; start again a worker that died."""
        while not self._stopping.is_set():
            by_connection = {connection: worker for worker, (_, connection) in self._processes.items()}
            for connection in wait(list(by_connection), timeout=0.5):
                worker = by_connection[connection]
                try:
                    message = connection.recv()
                except (EOFError, OSError):
                    if self._stopping.is_set():
                        return
                    self.leader.follower_gone(worker)
                    process, _ = self._processes[worker]
                    process.join(5)
                    log.error("ksql worker %d exited (code %s); starting it again", worker, process.exitcode)
                    connection.close()
                    self._feeds.pop(worker).close()
                    self._statuses.pop(worker, None)
                    time.sleep(1.0)
                    self._spawn(worker)
                    continue
                if isinstance(message, tuple) and message[0] == "subscribe":
                    _, generation, positions = message
                    self.leader.follower_subscribed(worker, generation, positions)
                else:
                    self._statuses[worker] = message


def _enlarge_pipe(connection: Connection) -> None:
    """Give the pipe under `connection` `_FEED_PIPE_BYTES` of buffer where the system allows it (Linux)."""
    try:
        fcntl.fcntl(connection.fileno(), fcntl.F_SETPIPE_SZ, _FEED_PIPE_BYTES)
    except (AttributeError, OSError):
        pass  # no F_SETPIPE_SZ (macOS), or a lower pipe-max-size: the default buffer works, a little slower


def combined_status(own: dict, workers: list[dict]) -> dict:
    """One status for the whole engine: worker 0's `own` and the others' reports.

    `records_in` is what every worker has read (the smallest count): the
    pipeline is through an input once all its queries are. Counts of work
    done are summed; `workers` keeps each worker's own report.
    """
    every = [own, *workers]
    combined = dict(own)
    combined["ready"] = all(w.get("ready") for w in every)
    combined["outage"] = next((w["outage"] for w in every if w.get("outage")), None)
    combined["records_in"] = min(w.get("records_in", 0) for w in every)
    for count in ("queries", "records_out", "dead_letters", "commits", "aborts", "uncommitted", "assigned_partitions", "fetching_partitions"):
        combined[count] = sum(w.get(count, 0) for w in every)
    combined["recoveries"] = max(w.get("recoveries", 0) for w in every)
    combined["workers"] = every
    return combined


def run_worker(cluster: Cluster, engine_id: str, worker: int, workers: int, commit_interval_ms: int, connection: Connection, feed: Connection) -> None:
    """A worker process: run `EngineRuntime` worker `worker` until told to stop or the control pipe closes."""
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s %(levelname)s worker-{worker} %(name)s: %(message)s")
    for noisy in ("httpx", "httpx2"):  # one line per registry request otherwise, as the server also silences
        logging.getLogger(noisy).setLevel(logging.WARNING)
    runtime = EngineRuntime(cluster, engine_id=engine_id, worker=worker, workers=workers, commit_interval_ms=commit_interval_ms)
    sending = threading.Lock()  # statuses go from this thread, subscriptions from the runtime's

    def send(message) -> None:
        with sending:
            connection.send(message)

    def subscribe(generation: int, positions: dict) -> None:
        try:
            send(("subscribe", generation, positions))
        except OSError:
            pass  # the server is gone: this process stops (below)

    def read_feed() -> None:
        try:
            while True:
                runtime.feed(*pickle.loads(feed.recv_bytes()))
        except (EOFError, OSError):
            pass

    runtime.on_subscribe = subscribe
    threading.Thread(target=read_feed, name="ksql-feed", daemon=True).start()
    runtime.start()
    settle_heap()
    try:
        while True:
            if connection.poll(_REPORT_INTERVAL):
                message = connection.recv()  # a recorded statement, "stop", or EOFError: the server is gone
                if isinstance(message, tuple) and message[0] == "commands":
                    runtime.commands_recorded(message[1])
                    continue
                break
            send({**runtime.status(), "pid": os.getpid()})
    except (EOFError, OSError, KeyboardInterrupt):
        pass
    finally:
        runtime.stop(10)
