"""Survey results as the bot shows them: read from the result topics, drawn as text bars.

`parse_result` is the one place that knows the record format the ksql pipeline (ksql/05 and 06) writes:
the key is the survey id (KAFKA format: UTF-8 bytes; on survey-results-final followed by the window start as
8 big-endian bytes of epoch milliseconds, as Kafka Streams writes time-windowed keys); the Avro value has
`QUESTION` and the HISTOGRAM map `RESULTS`. Everything else works on `SurveyResult`.
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import Message

from ..cluster import Cluster
from ..surveys import Survey
from .follow import TopicFollower
from .ledger import EntryLedger

BAR_WIDTH = 10


@dataclass(frozen=True)
class SurveyResult:
    """One histogram of a survey's answers; a window's bounds when it comes from the final results."""

    key: str  # the survey id or the question, as the result topic keys it
    counts: dict[str, int]
    question: str | None = None
    window_start: datetime | None = None
    window_end: datetime | None = None

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def _field(value: Mapping[str, Any], *names: str) -> Any:
    lowered = {k.lower(): v for k, v in value.items()}
    for name in names:
        if name in lowered:
            return lowered[name]
    return None


def _time(millis: Any) -> datetime | None:
    if isinstance(millis, datetime):
        return millis if millis.tzinfo else millis.replace(tzinfo=UTC)
    if isinstance(millis, (int, float)):
        return datetime.fromtimestamp(millis / 1000, UTC)
    return None


def parse_result(key: bytes | str | None, value: Mapping[str, Any] | None, *, windowed: bool = False
                 ) -> SurveyResult | None:
    """A result record (raw key, decoded value) -> SurveyResult; None for tombstones and records without a
    histogram. `windowed`: the key ends with the window start (survey-results-final)."""
    if value is None:
        return None
    counts = _field(value, "results")
    if not isinstance(counts, Mapping):
        return None
    window_start = None
    if isinstance(key, bytes) and windowed and len(key) >= 8:
        key, (start_ms,) = key[:-8], struct.unpack(">q", key[-8:])
        window_start = _time(start_ms)
    if isinstance(key, bytes):
        key = key.decode(errors="replace")
    key = key or _field(value, "survey_id") or _field(value, "question")
    if not key:
        return None
    return SurveyResult(
        key=str(key),
        counts={str(option): int(n or 0) for option, n in counts.items()},
        question=_field(value, "question"),
        window_start=window_start or _time(_field(value, "windowstart", "window_start")),
        window_end=_time(_field(value, "windowend", "window_end")),
    )


def format_results(survey: Survey, counts: Mapping[str, int], source: str) -> str:
    """Text bars with counts and percentages, the survey's options first, labelled with their source."""
    total = sum(counts.values())
    options = list(survey.options) + sorted(o for o in counts if o not in survey.options)
    width = max(len(o) for o in options) if options else 0
    lines = [f"Results for \"{survey.summary}\" ({source}):", survey.question]
    for option in options:
        n = counts.get(option, 0)
        share = n / total if total else 0.0
        filled = int(share * BAR_WIDTH + 0.5)  # half up: 25% of 10 is 3 bars
        lines.append(f"{option.ljust(width)} {'█' * filled}{'░' * (BAR_WIDTH - filled)} {n} ({share:.0%})")
    lines.append(f"{total} answer{'s' if total != 1 else ''} in total.")
    return "\n".join(lines)


LIVE = "live, from survey-results-live"
COMPUTED = "computed from survey-entries: no live results yet"


class ResultsBoard:
    """What /results shows: the live histogram, or else one computed from the entries the bot has read.

    `ready` is set once survey-results-live has been read (at once for a board that does not follow it).
    """

    def __init__(self, ledger: EntryLedger):
        self.ledger = ledger
        self._live: dict[str, SurveyResult] = {}
        self._lock = threading.Lock()
        self.ready = threading.Event()
        self.ready.set()
        self._gave_up = False

    def wait_until_read(self, timeout: float) -> bool:
        """Wait up to `timeout` s for survey-results-live to be read; False if it was not.

        Waited for once: a topic that cannot be read then (no pipeline writes it, Kafka is down) is not
        waited for again, and the results are computed from the entries meanwhile.
        """
        if self.ready.is_set():
            return True
        if self._gave_up:
            return False
        read = self.ready.wait(timeout)
        self._gave_up = not read
        return read

    def apply_record(self, message: Message, value: Mapping[str, Any] | None) -> None:
        result = parse_result(message.key(), value)
        if result is not None:
            with self._lock:
                self._live[result.key] = result

    def live(self, survey: Survey) -> SurveyResult | None:
        with self._lock:
            return self._live.get(survey.survey_id) or self._live.get(survey.question)

    def text(self, survey: Survey) -> str:
        live = self.live(survey)
        if live is not None:
            return format_results(survey, live.counts, LIVE)
        return format_results(survey, self.ledger.counts(survey.survey_id), COMPUTED)

    def follow(self, cluster: Cluster) -> TopicFollower:
        """Start reading survey-results-live; `ready` is set once the whole topic has been read."""
        follower = TopicFollower(cluster, cluster.topics.results_live, self.apply_record)
        self.ready = follower.caught_up
        self._gave_up = False
        return follower.start()
