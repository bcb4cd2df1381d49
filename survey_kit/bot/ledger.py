"""Who answered which survey, and with what: the bot's memory of survey-entries.

A respondent answers each survey once. The ledger is rebuilt from survey-entries when the bot starts (so it
survives restarts) and updated as the bot confirms entries (so a second /survey right after /y is refused even
before the entry is back from Kafka). Entries delivered twice carry the same user, so they count once.
"""

from __future__ import annotations

import threading
from collections import Counter

from confluent_kafka import Message

from ..cluster import Cluster
from .follow import TopicFollower


class EntryLedger:
    """(survey id, user id) -> the response, first answer wins."""

    def __init__(self) -> None:
        self._answers: dict[tuple[str, str], str] = {}
        self._lock = threading.Lock()
        self.ready = threading.Event()
        self.from_kafka = 0

    def record(self, survey_id: str, user_id: str, response: str) -> bool:
        """Note an answer; False if this user had already answered this survey (it is not counted again)."""
        with self._lock:
            if (survey_id, user_id) in self._answers:
                return False
            self._answers[(survey_id, user_id)] = response
            return True

    def has_answered(self, survey_id: str, user_id: str) -> bool:
        with self._lock:
            return (survey_id, user_id) in self._answers

    def counts(self, survey_id: str) -> Counter[str]:
        """Responses to a survey, one per respondent."""
        with self._lock:
            return Counter(r for (sid, _), r in self._answers.items() if sid == survey_id)

    def apply_record(self, message: Message, value: dict | None) -> None:
        if value is not None:
            self.from_kafka += 1
            self.record(value["survey_id"], value["user_id"], value["response"])

    def follow(self, cluster: Cluster) -> TopicFollower:
        """Start reading survey-entries; `ready` is set once the whole topic has been read."""
        follower = TopicFollower(cluster, cluster.topics.entries, self.apply_record)
        self.ready = follower.caught_up
        return follower.start()
