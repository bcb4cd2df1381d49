"""Topics are created idempotently; surveys are validated, published, listed and disabled."""

from __future__ import annotations

import pytest
from confluent_kafka.admin import AdminClient, ConfigResource

from survey_kit.cluster import from_stack
from survey_kit.surveys import Survey, SurveyError, create_survey, disable_survey, get_survey, list_surveys
from survey_kit.topics import create_topics
from tests.conftest import unique_settings

PIE = Survey(
    "1",
    "Which Thanksgiving Pie is your favorite?",
    "Thanksgiving Pie",
    ["Pumpkin Pie", "Pecan Pie", "Apple Pie", "Thanksgiving Leftover Pot Pie", "Other"],
)


def test_topics_are_created_once_with_configured_partitions(stack):
    cluster = from_stack(stack, unique_settings(partitions=3))
    first = create_topics(cluster)
    assert [r.status for r in first] == ["created"] * 6
    assert {r.partitions for r in first} == {3}
    again = create_topics(cluster)
    assert [r.status for r in again] == ["exists"] * 6
    admin = AdminClient(cluster.admin_config())
    resource = ConfigResource(ConfigResource.Type.TOPIC, cluster.topics.questions)
    assert admin.describe_configs([resource])[resource].result()["cleanup.policy"].value == "compact"


def test_partition_mismatch_is_reported(stack):
    settings = unique_settings(partitions=1)
    create_topics(from_stack(stack, settings))
    reports = create_topics(from_stack(stack, settings.model_copy(update={"partitions": 2})))
    assert all("has 1 partitions, the configuration says 2" in r.note for r in reports)


def test_create_list_and_disable_a_survey(cluster):
    assert list_surveys(cluster) == []
    create_survey(cluster, PIE)
    create_survey(cluster, Survey("2", "Coffee or tea?", "Drinks", ["Coffee", "Tea"], enabled=False))
    surveys = list_surveys(cluster)
    assert [s.survey_id for s in surveys] == ["1", "2"]
    assert surveys[0] == PIE
    disable_survey(cluster, "1")
    assert get_survey(cluster, "1").enabled is False
    create_survey(cluster, PIE)  # the same question again re-enables it
    assert get_survey(cluster, "1").enabled is True


@pytest.mark.parametrize(
    "survey, message",
    [
        (Survey("1", "  ", "s", ["a", "b"]), "question is empty"),
        (Survey("1", "q", "s", ["a"]), "at least two options"),
        (Survey("1", "q", "s", ["a", " "]), "option is blank"),
        (Survey("1", "q", "s", ["Apple", "apple"]), "given twice"),
        (Survey("", "q", "s", ["a", "b"]), "id is empty"),
    ],
)
def test_invalid_surveys_are_rejected(survey, message):
    with pytest.raises(SurveyError, match=message):
        survey.validate()


def test_an_id_used_for_another_question_is_rejected(cluster):
    create_survey(cluster, PIE)
    with pytest.raises(SurveyError, match="already used"):
        create_survey(cluster, Survey("1", "Cake or pie?", "Dessert", ["Cake", "Pie"]))


def test_disabling_an_unknown_survey_says_so(cluster):
    with pytest.raises(SurveyError, match="no survey '9'"):
        disable_survey(cluster, "9")


def test_a_broker_address_where_nothing_listens_is_reported_without_waiting_out_the_timeout():
    import re
    import time

    from survey_kit.cluster import Cluster
    from survey_kit.consume import partitions_of

    nowhere = Cluster("127.0.0.1:1", "http://127.0.0.1:1")  # every connection refused at once
    for attempt, message in ((lambda: create_topics(nowhere, timeout=120), "cannot create topics on 127.0.0.1:1: "),
                             (lambda: partitions_of(nowhere, "survey-entries", timeout=120), "cannot reach Kafka at 127.0.0.1:1: ")):
        started = time.monotonic()
        with pytest.raises(ConnectionError) as raised:
            attempt()
        assert time.monotonic() - started < 60  # gave up on the refusals, not at the 120 s timeout
        assert str(raised.value).startswith(message)
        assert re.search(r"Connection refused \(after \d+ms in state CONNECT\) \(nothing listens there: "
                         r"is the broker running, and is kafka.bootstrap.servers right\?\)$", str(raised.value))
