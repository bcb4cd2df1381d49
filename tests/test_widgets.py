"""The live survey view: follows entries in the background, counts them right, stops cleanly, offline."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
import uuid

import altair as alt

from survey_kit.serde import avro_producer
from survey_kit.surveys import Survey, create_survey
from survey_kit.widgets import ALL_TIME, LiveSurveyView

PIE = Survey("1", "Which Thanksgiving Pie is your favorite?", "Thanksgiving Pie", ["Pumpkin Pie", "Pecan Pie", "Apple Pie"])
START = 1_764_028_800_000  # 2025-11-25 00:00 UTC, a window boundary for 10-minute windows


def produce_entries(cluster, answers, start=START, step_ms=60_000):
    producer = avro_producer(cluster, "survey-entries")
    for i, answer in enumerate(answers):
        producer.produce(
            cluster.topics.entries, key="1",
            value={"survey_id": "1", "user_id": str(i), "name": f"user {i}", "company": None, "location": None,
                   "response": answer},
            headers={"entry_id": uuid.uuid4().hex}, timestamp=start + i * step_ms,
        )
    assert producer.flush(10) == 0


def test_live_view_counts_entries_as_they_arrive_and_stops(cluster):
    create_survey(cluster, PIE)
    view = LiveSurveyView(cluster, survey_id="1", window_size="10min")
    assert view.survey_control.value == "1"
    assert list(view.counts()["count"]) == [0, 0, 0]  # every option shown before any answer
    view.start()
    assert view.running
    produce_entries(cluster, ["Apple Pie"] * 12 + ["Pecan Pie"] * 3)  # 15 minutes of entries
    counts = view.run(duration_s=30, until=lambda v: len(v.entries()) >= 15)
    assert not view.running
    assert f"tail-{cluster.topics.entries}" not in {t.name for t in threading.enumerate()}
    by_option = dict(zip(counts["option"], counts["count"]))
    assert by_option == {"Pumpkin Pie": 0, "Pecan Pie": 3, "Apple Pie": 12}
    apple = counts[counts["option"] == "Apple Pie"].iloc[0]
    assert apple["total"] == 15 and round(apple["share"], 3) == 0.8
    assert apple["ci_low"] < 0.8 < apple["ci_high"]
    # Two 10-minute windows: the first holds 10 Apple Pie answers, the second 2 Apple and 3 Pecan.
    assert view.window_control.options[0] == ALL_TIME and len(view.window_control.options) == 3
    first, second = view.window_control.options[1:]
    assert dict(zip(*view.counts("1", first)[["option", "count"]].T.values)) == {"Pumpkin Pie": 0, "Pecan Pie": 0, "Apple Pie": 10}
    assert view.counts("1", second)["count"].sum() == 5


def test_the_stop_button_ends_an_awaited_run_early(cluster):
    """While `await view.run_async(...)` runs, the kernel handles the view's controls: its stop button ends it."""
    create_survey(cluster, PIE)
    produce_entries(cluster, ["Pecan Pie"] * 2)
    view = LiveSurveyView(cluster, survey_id="1")

    async def live_part():
        async def press_stop():
            while not view.running:  # once the run follows the topic
                await asyncio.sleep(0.05)
            view.stop_control.click()
        pressing = asyncio.create_task(press_stop())
        counts = await view.run_async(duration_s=60)
        await pressing
        return counts

    started = time.monotonic()
    counts = asyncio.run(live_part())
    assert time.monotonic() - started < 20 and not view.running
    assert view.stop_control.disabled
    assert list(counts.columns) == ["option", "count", "total", "share", "ci_low", "ci_high"]


def test_chart_renders_offline():
    alt.JupyterChart.enable_offline()
    assert alt.JupyterChart._is_offline
    assert "cdn.jsdelivr" not in alt.JupyterChart._esm


def test_chart_title_states_question_total_and_window(cluster):
    create_survey(cluster, PIE)
    produce_entries(cluster, ["Pumpkin Pie", "Apple Pie"])
    view = LiveSurveyView(cluster, survey_id="1")
    view.run(duration_s=30, until=lambda v: len(v.entries()) >= 2)
    spec = view.chart().to_dict()
    assert spec["title"] == "Which Thanksgiving Pie is your favorite? (2 answers, all time)"


def test_the_status_line_says_when_the_view_waits_for_the_schema_registry(registry_cluster, own_registry):
    create_survey(registry_cluster, PIE)
    produce_entries(registry_cluster, ["Apple Pie"] * 4)
    view = LiveSurveyView(dataclasses.replace(registry_cluster), survey_id="1")  # a registry client of its own
    own_registry.stop_service("registry")
    view.start()
    try:
        deadline = time.monotonic() + 20
        while "records held" not in view.status.value and time.monotonic() < deadline:
            time.sleep(0.1)
        assert view.status.value.startswith("following survey-entries: 0 entries received; the Schema Registry at ")
        assert view.status.value.endswith("4 records held until it answers")
        own_registry.start_service("registry")
        deadline = time.monotonic() + 20
        while len(view.entries()) < 4 and time.monotonic() < deadline:
            time.sleep(0.1)
        view.render(force=True)
        assert len(view.entries()) == 4 and "Schema Registry" not in view.status.value
    finally:
        view.stop()
    assert dict(zip(*view.counts()[["option", "count"]].T.values))["Apple Pie"] == 4
