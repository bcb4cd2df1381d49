"""Surveys: what is asked, with which options. A survey is a record on survey-questions keyed by its id.

>>> survey = Survey("1", "Which Thanksgiving Pie is your favorite?", "Thanksgiving Pie",
...                 ["Pumpkin Pie", "Pecan Pie", "Apple Pie", "Thanksgiving Leftover Pot Pie", "Other"])
>>> create_survey(cluster, survey)
>>> [s.survey_id for s in list_surveys(cluster)]
['1']
>>> disable_survey(cluster, "1")
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

from .cluster import Cluster
from .consume import read_values
from .serde import avro_producer, close_producer

SCHEMA = "survey-questions"


class SurveyError(ValueError):
    """A survey definition or request is invalid; the message says what to change."""


def _loosely(text: str) -> str:
    """`text` as a respondent's typing is compared: case and runs of spaces do not count."""
    return " ".join(text.split()).casefold()


def match_typed(text: str, choices) -> str | None:
    """The one of `choices` a respondent means by typing `text`, as `choices` spell it, or None.

    Typed answers match regardless of case and spacing ("pecan  pie" is "Pecan Pie"), so that a
    respondent who types instead of tapping the keyboard is understood while the results still count
    each choice under one spelling. A text that matches several choices so loosely matches none.
    """
    if text in choices:
        return text
    loose = _loosely(text)
    matches = [choice for choice in choices if _loosely(choice) == loose]
    return matches[0] if len(matches) == 1 else None


@dataclass(frozen=True)
class Survey:
    """One single-question survey, as stored on survey-questions (the talk's slide 29)."""

    survey_id: str
    question: str
    summary: str
    options: list[str] = field(default_factory=list)
    enabled: bool = True

    def validate(self) -> Survey:
        """Return self, or raise SurveyError saying what is wrong."""
        if not self.survey_id.strip():
            raise SurveyError("the survey id is empty: give one with --id")
        if not self.question.strip():
            raise SurveyError(f"survey {self.survey_id}: the question is empty")
        if not self.summary.strip():
            raise SurveyError(f"survey {self.survey_id}: the summary is empty")
        if any(not option.strip() for option in self.options):
            raise SurveyError(f"survey {self.survey_id}: an option is blank")
        if len(self.options) < 2:
            raise SurveyError(f"survey {self.survey_id}: give at least two options (got {len(self.options)})")
        seen = set()
        for option in self.options:
            if _loosely(option) in seen:
                raise SurveyError(f"survey {self.survey_id}: option {option!r} is given twice")
            seen.add(_loosely(option))
        return self

    def to_record(self) -> dict:
        return asdict(self)

    @classmethod
    def from_record(cls, record: dict) -> Survey:
        return cls(
            survey_id=record["survey_id"],
            question=record["question"],
            summary=record["summary"],
            options=list(record["options"]),
            enabled=record["enabled"],
        )


def list_surveys(cluster: Cluster) -> list[Survey]:
    """The current definition of every survey (the latest record per id), ordered by id."""
    latest: dict[str, Survey | None] = {}
    for message, value in read_values(cluster, cluster.topics.questions):
        key = message.key().decode() if message.key() is not None else None
        if key is None:
            continue
        latest[key] = Survey.from_record(value) if value is not None else None  # None: deleted
    return sorted((s for s in latest.values() if s is not None), key=lambda s: s.survey_id)


def get_survey(cluster: Cluster, survey_id: str) -> Survey:
    for survey in list_surveys(cluster):
        if survey.survey_id == survey_id:
            return survey
    raise SurveyError(f"there is no survey {survey_id!r}: `survey-kit survey list` shows the surveys")


def create_survey(cluster: Cluster, survey: Survey) -> Survey:
    """Publish a new survey. Re-publishing the same id is allowed only with the same question."""
    survey = survey.validate()
    for existing in list_surveys(cluster):
        if existing.survey_id == survey.survey_id and existing.question != survey.question:
            raise SurveyError(
                f"survey id {survey.survey_id!r} is already used for the question {existing.question!r}: "
                "choose another id"
            )
    _publish(cluster, survey)
    return survey


def disable_survey(cluster: Cluster, survey_id: str) -> Survey:
    """Stop offering a survey (its answers stay)."""
    survey = replace(get_survey(cluster, survey_id), enabled=False)
    _publish(cluster, survey)
    return survey


def _publish(cluster: Cluster, survey: Survey) -> None:
    producer = avro_producer(cluster, SCHEMA)
    errors = []
    try:
        producer.produce(
            cluster.topics.questions,
            key=survey.survey_id,
            value=survey.to_record(),
            on_delivery=lambda err, msg: err and errors.append(err),
        )
        remaining = producer.flush(15)
    finally:
        close_producer(producer)  # what is not acknowledged by now is dropped: not saved, as the error says
    if remaining or errors:
        reason = errors[0].str() if errors else "no acknowledgement within 15 s"
        raise ConnectionError(f"survey {survey.survey_id} was not saved on {cluster.bootstrap_servers}: {reason}")
