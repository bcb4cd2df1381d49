"""How worker 0 hands fetched records on to the engine's other worker processes.

Worker 0's consumer reads the source topics for every worker (see
`runtime.EngineRuntime`). Another worker keeps what it was handed in an
`Inbox` until its runtime takes it:

    inbox = Inbox(limit=20_000)
    generation = inbox.renew()          # subscribe with this generation and the positions to read from
    inbox.put(generation, chunks)       # the process' feed reader: what worker 0 handed on
    chunks, drained = inbox.take(5_000, wait=0.02)   # the runtime: up to a batch, in order

Each subscription opens a generation: what was handed on under an older one
is dropped (worker 0 reads it again from the new positions), so nothing is
processed twice out of order after a rebuild. The inbox holds at most `limit`
records: `put` then waits, and worker 0, writing to the pipe its reader no
longer drains, keeps the worker's pace.
"""

from __future__ import annotations

import collections
import threading


class Inbox:
    """The (partition, records) chunks worker 0 handed on to one worker, not processed yet."""

    def __init__(self, limit: int):
        self.limit = limit
        self.generation = 0
        self._chunks: collections.deque[tuple[int, list]] = collections.deque()  # (records, chunks of one fetch)
        self._records = 0
        self._changed = threading.Condition()
        self._closed = False

    def renew(self) -> int:
        """Open a new generation, dropping what was handed on before; returns it."""
        with self._changed:
            self.generation += 1
            self._chunks.clear()
            self._records = 0
            self._changed.notify_all()
            return self.generation

    def put(self, generation: int, chunks: list) -> None:
        """Keep one fetch's chunks, unless of an older generation; waits while `limit` records are held."""
        records = sum(len(run) for _, run in chunks)
        with self._changed:
            while self._records >= self.limit and generation == self.generation and not self._closed:
                self._changed.wait(0.5)
            if generation != self.generation or self._closed:
                return
            self._chunks.append((records, chunks))
            self._records += records
            self._changed.notify_all()

    def take(self, batch_size: int, wait: float) -> tuple[list, bool]:
        """The chunks of the oldest fetches, up to `batch_size` records (waiting up to `wait` s for the
        first); whether none are left."""
        taken: list = []
        count = 0
        with self._changed:
            if not self._chunks:
                self._changed.wait(wait)
            while self._chunks and count < batch_size:
                records, chunks = self._chunks.popleft()
                taken += chunks
                count += records
            self._records -= count
            self._changed.notify_all()
            return taken, not self._chunks

    def close(self) -> None:
        """Take nothing more (the worker stops); a waiting `put` returns."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()
