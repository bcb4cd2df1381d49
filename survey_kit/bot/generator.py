"""Survey entries written straight to Kafka with chosen timestamps, for tests and benchmarks of the windowed
analysis (no bot, no Telegram).

    planned = plan_entries(survey, 1000, start=datetime(2026, 11, 25, tzinfo=UTC), interval=timedelta(seconds=1),
                           late=20, late_by=timedelta(hours=1), shuffle=5, seed=7)
    write_entries(cluster, planned)

Entries are spaced `interval` apart from `start` (event time = the record's timestamp). `late` of them get
a timestamp `late_by` earlier than their place in the stream (late arrivals: behind stream time, possibly past
a window's grace period); `shuffle` > 0 swaps entries at random with one up to that many places ahead (out
of order, within a grace period; an entry may move further when swapped again). Each entry is a different
respondent and carries an `entry_id` header, as the bot's.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from ..cluster import Cluster
from ..serde import avro_producer, close_producer
from ..surveys import Survey
from .delivery import ENTRY_ID_HEADER, SCHEMA
from .simulate import CITIES, COMPANIES, FIRST_NAMES, pick_answer


@dataclass(frozen=True)
class PlannedEntry:
    """One record to write: its event time, the entry and its id."""

    timestamp: datetime
    entry: dict
    entry_id: str
    late: bool = False

    @property
    def timestamp_ms(self) -> int:
        return int(self.timestamp.timestamp() * 1000)


def plan_entries(survey: Survey, count: int, *, start: datetime, interval: timedelta = timedelta(seconds=1),
                 late: int = 0, late_by: timedelta = timedelta(minutes=15), shuffle: int = 0,
                 answers: dict[str, float] | None = None, seed: int | None = None,
                 user_prefix: str = "gen") -> list[PlannedEntry]:
    """The entries to write, in the order they will be written."""
    if count < 0 or late < 0 or shuffle < 0:
        raise ValueError("count, late and shuffle must not be negative")
    if late > count:
        raise ValueError(f"late ({late}) cannot exceed count ({count})")
    if start.tzinfo is None:
        raise ValueError("start must be timezone-aware, e.g. datetime(2026, 11, 25, tzinfo=UTC)")
    rng = random.Random(seed)
    late_positions = set(rng.sample(range(count), late))
    planned = []
    for i in range(count):
        is_late = i in late_positions
        entry = {
            "survey_id": survey.survey_id,
            "user_id": f"{user_prefix}-{i}",
            "name": rng.choice(FIRST_NAMES),
            "company": rng.choice(COMPANIES + [None]),
            "location": rng.choice(CITIES + [None]),
            "response": pick_answer(rng, list(survey.options), answers or {}),
        }
        timestamp = start + i * interval - (late_by if is_late else timedelta(0))
        planned.append(PlannedEntry(timestamp, entry, uuid.UUID(int=rng.getrandbits(128)).hex, is_late))
    for i in range(len(planned) - 1):
        if shuffle and rng.random() < 0.5:
            j = min(len(planned) - 1, i + rng.randint(1, shuffle))
            planned[i], planned[j] = planned[j], planned[i]
    return planned


def write_entries(cluster: Cluster, planned: list[PlannedEntry], timeout: float = 60.0) -> int:
    """Produce the planned entries to survey-entries in order, with their timestamps; returns how many."""
    producer = avro_producer(cluster, SCHEMA, **{"linger.ms": 20})
    errors = []
    try:
        for item in planned:
            while True:
                try:
                    producer.produce(
                        cluster.topics.entries,
                        key=item.entry["survey_id"],
                        value=item.entry,
                        timestamp=item.timestamp_ms,
                        headers=[(ENTRY_ID_HEADER, item.entry_id.encode())],
                        on_delivery=lambda err, msg: err and errors.append(err),
                    )
                    break
                except BufferError:
                    producer.poll(0.1)  # the local queue is full: let deliveries drain it
        remaining = producer.flush(timeout)
    finally:
        close_producer(producer)
    if remaining or errors:
        reason = errors[0].str() if errors else f"{remaining} not acknowledged within {timeout:g} s"
        raise ConnectionError(f"writing entries to {cluster.topics.entries} failed: {reason}")
    return len(planned)
