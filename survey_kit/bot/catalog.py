"""The surveys the bot offers: a table kept from the survey-questions topic, and the admin's writes to it."""

from __future__ import annotations

import threading

from confluent_kafka import Message

from ..cluster import Cluster
from ..surveys import Survey, create_survey, disable_survey, match_typed
from .follow import TopicFollower


class SurveyCatalog:
    """Survey id -> its latest definition. Filled from survey-questions (`follow`) or directly with `put`.

    `ready` is set once the catalog holds every survey: at once for a catalog made from a list, after the
    whole of survey-questions has been read for a followed one.
    """

    def __init__(self, surveys: list[Survey] | None = None):
        self._surveys: dict[str, Survey] = {}
        self._lock = threading.Lock()
        self.ready = threading.Event()
        if surveys is not None:
            for survey in surveys:
                self.put(survey)
            self.ready.set()

    def put(self, survey: Survey) -> None:
        with self._lock:
            self._surveys[survey.survey_id] = survey

    def remove(self, survey_id: str) -> None:
        with self._lock:
            self._surveys.pop(survey_id, None)

    def get(self, survey_id: str) -> Survey | None:
        with self._lock:
            return self._surveys.get(survey_id)

    def all(self) -> list[Survey]:
        with self._lock:
            return sorted(self._surveys.values(), key=lambda s: s.survey_id)

    def enabled(self) -> list[Survey]:
        """The surveys open for answers, by id."""
        return [s for s in self.all() if s.enabled]

    def find(self, key: str) -> Survey | None:
        """The survey with this id, or else with this question (result topics may be keyed by either)."""
        survey = self.get(key)
        if survey is None:
            survey = next((s for s in self.all() if s.question == key), None)
        return survey

    def named(self, text: str) -> Survey | None:
        """The survey a user means by `text`: its id, or its summary as typed (case and spacing do not count)."""
        survey = self.get(text)
        if survey is None:
            by_summary = {s.summary: s for s in self.all()}
            survey = by_summary.get(match_typed(text, by_summary))
        return survey

    def apply_record(self, message: Message, value: dict | None) -> None:
        """One survey-questions record: a definition, or a tombstone deleting the survey."""
        key = message.key()
        if key is None:
            return
        survey_id = key.decode() if isinstance(key, bytes) else key
        if value is None:
            self.remove(survey_id)
        else:
            self.put(Survey.from_record(value))

    def follow(self, cluster: Cluster) -> TopicFollower:
        """Start keeping this catalog up to date from survey-questions; returns the running follower."""
        follower = TopicFollower(cluster, cluster.topics.questions, self.apply_record)
        self.ready = follower.caught_up
        return follower.start()


class KafkaSurveys:
    """Creating and closing surveys on survey-questions (what /newsurvey and /closesurvey do)."""

    def __init__(self, cluster: Cluster, catalog: SurveyCatalog):
        self.cluster = cluster
        self.catalog = catalog

    def create(self, survey: Survey) -> Survey:
        survey = create_survey(self.cluster, survey)
        self.catalog.put(survey)  # offered right away, before the follower sees the record
        return survey

    def close(self, survey_id: str) -> Survey:
        survey = disable_survey(self.cluster, survey_id)
        self.catalog.put(survey)
        return survey
