"""A test driver for the engine: pipe records in, read decoded outputs per topic, no broker.

Like Kafka Streams' TopologyTestDriver: records are processed one at a time in
the order given; a query's output on a topic that another query reads is fed
on to it, as the broker would.

    driver = Driver(engine)
    driver.pipe("survey-entries", key=b"1", value=avro_bytes, timestamp=1000)
    driver.read("survey-results-live")   # [DecodedRecord(key=..., value=..., ...)]
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from .engine import Engine
from .operators import OutputRecord


@dataclass
class DecodedRecord:
    topic: str
    key: tuple
    value: dict | None
    timestamp: int
    window_start: int | None = None
    window_end: int | None = None


class Driver:
    def __init__(self, engine: Engine):
        self.engine = engine
        self.outputs: dict[str, list[OutputRecord]] = defaultdict(list)
        self.dead_letters: list[OutputRecord] = []
        self._offsets: dict[tuple[str, int], int] = defaultdict(int)
        self._read_positions: dict[str, int] = defaultdict(int)

    def pipe(self, topic: str, key: bytes | None, value: bytes | None, timestamp: int, partition: int = 0) -> None:
        """Process one input record, and everything it causes downstream."""
        pending = [(topic, partition, key, value, timestamp)]
        while pending:
            t, p, k, v, ts = pending.pop(0)
            offset = self._offsets[(t, p)]
            self._offsets[(t, p)] += 1
            for out in self.engine.process(t, p, offset, ts, k, v):
                self._collect(out, pending)

    def punctuate(self, wall_clock_ms: int) -> None:
        """Advance wall-clock time (closes due EMIT FINAL windows when that is switched on)."""
        pending: list = []
        for out in self.engine.punctuate(wall_clock_ms):
            self._collect(out, pending)
        for item in pending:
            self.pipe(item[0], item[2], item[3], item[4], item[1])

    def commit(self) -> None:
        """What the runtime does at a commit: release updates held by the record cache."""
        pending: list = []
        for out in self.engine.flush():
            self._collect(out, pending)
        for item in pending:
            self.pipe(item[0], item[2], item[3], item[4], item[1])

    def _collect(self, out: OutputRecord, pending: list) -> None:
        if out.dead_letter:
            self.dead_letters.append(out)
            return
        self.outputs[out.topic].append(out)
        if out.topic in self.engine.source_topics():
            pending.append((out.topic, 0, out.key, out.value, out.timestamp))

    def decode(self, out: OutputRecord) -> DecodedRecord:
        sink = next((s for s in self.engine.sources.values() if s.topic == out.topic and s.written_by), None)
        sink = sink or self.engine.source_for_topic(out.topic)
        serdes = self.engine.serdes(sink.name)
        key, window_start = serdes.key.deserialize(out.key)
        value = serdes.value.deserialize(out.value)
        window_end = window_start + sink.window.size_ms if window_start is not None and sink.window else None
        return DecodedRecord(out.topic, key, value, out.timestamp, window_start, window_end)

    def read(self, topic: str) -> list[DecodedRecord]:
        """The records produced on `topic` since the last read, decoded with its sink's formats."""
        records = self.outputs.get(topic, [])
        start = self._read_positions[topic]
        self._read_positions[topic] = len(records)
        return [self.decode(out) for out in records[start:]]
