"""Simulated respondents through the running bot, the entries generator, and their CLI commands."""

from __future__ import annotations

import argparse
import json
import socket
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
import yaml

from survey_kit.bot.cli import add_subcommands
from survey_kit.bot.generator import plan_entries, write_entries
from survey_kit.bot.runner import BotRunner
from survey_kit.bot.simulate import parse_answers, simulate
from survey_kit.consume import read_messages, read_values
from survey_kit.faketelegram import FakeTelegramServer
from survey_kit.surveys import Survey, create_survey
from tests.waiting import wait_for

PIE = Survey("1", "Which Thanksgiving Pie is your favorite?", "Thanksgiving Pie",
             ["Pumpkin Pie", "Pecan Pie", "Apple Pie", "Other"])
CAKE = Survey("2", "Which cake do you bake most?", "Cakes", ["Carrot", "Cheesecake"])


def delivered(cluster, runner) -> list[dict]:
    """The entries on survey-entries, once those the bot saved to its outbox (Kafka slow to acknowledge) are sent."""
    wait_for(lambda: runner.status()["outbox"] == 0, what="the outbox to be delivered")
    return [v for _, v in read_values(cluster, cluster.topics.entries)]


def parse(argv):
    parser = argparse.ArgumentParser()
    parser.add_argument("--config")
    add_subcommands(parser.add_subparsers())
    return parser.parse_args(argv)


@pytest.fixture
def running_bot(cluster, tmp_path):
    create_survey(cluster, PIE)
    with FakeTelegramServer() as fake:
        runner = BotRunner(cluster=cluster, data_dir=tmp_path / "bot", api_url=fake.api_url).start()
        try:
            assert runner.wait_until_ready(30)
            yield fake, runner
        finally:
            runner.stop()


def test_simulated_respondents_confirm_entries_that_reach_kafka(cluster, running_bot):
    fake, runner = running_bot
    report = simulate(fake.api_url, 40, answers={"Apple Pie": 0.5}, seed=3)
    assert report["failed"] == 0, report.get("failures")
    assert report["confirmed"] + report["cancelled"] == 40 and report["refused"] == 0
    assert report["cancelled"] > 0 and report["mistyped"] > 0  # some stray, with seed 3
    values = delivered(cluster, runner)
    assert len(values) == report["confirmed"] == report["sent"] + report["saved"]
    assert len({v["user_id"] for v in values}) == len(values)
    assert runner.status()["confirmed"] == report["confirmed"]
    assert Counter(v["response"] for v in values).most_common(1)[0][0] == "Apple Pie"


def test_a_seeded_simulation_run_again_is_new_people_doing_the_same(cluster, running_bot):
    # a workshop notebook run twice on one stack: the bot remembers who answered, and the fake Telegram
    # keeps every chat's messages, so the same people again would be refused or read the old replies
    fake, runner = running_bot
    first = simulate(fake.api_url, 15, seed=11)
    again = simulate(fake.api_url, 15, seed=11)
    assert again["failed"] == 0 and again["refused"] == 0, again.get("failures")

    def behaviour(report):  # sent or saved depends on how soon Kafka acknowledged, not on the seed
        return {k: v for k, v in report.items() if k not in ("seconds", "sent", "saved")}

    assert behaviour(again) == behaviour(first)
    values = delivered(cluster, runner)
    assert len({v["user_id"] for v in values}) == len(values) == first["confirmed"] + again["confirmed"]
    assert runner.status()["confirmed"] == len(values)


def test_simulate_command_prints_one_json_document(cluster, running_bot, capsys):
    fake, runner = running_bot
    create_survey(cluster, CAKE)
    args = parse(["simulate", "--respondents", "5", "--telegram-api-url", fake.api_url, "--cancel", "0",
                  "--json", "--seed", "1"])
    assert args.run(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["confirmed"] == 5 and report["cancelled"] == 0  # several surveys: the first is picked


def test_simulate_answers_the_survey_it_is_told_to(cluster, running_bot, tmp_path, capsys):
    fake, runner = running_bot
    create_survey(cluster, CAKE)
    config = tmp_path / "survey-kit.yaml"
    config.write_text(yaml.safe_dump({
        "kafka": {"bootstrap.servers": cluster.bootstrap_servers},
        "schema_registry": {"url": cluster.schema_registry_url},
        "topics": cluster.topics.model_dump(),
    }))
    args = parse(["--config", str(config), "simulate", "--respondents", "4", "--survey", "2", "--cancel", "0",
                  "--telegram-api-url", fake.api_url, "--json"])
    assert args.run(args) == 0
    assert json.loads(capsys.readouterr().out)["confirmed"] == 4
    values = delivered(cluster, runner)
    assert [v["survey_id"] for v in values] == ["2"] * 4
    args = parse(["--config", str(config), "simulate", "--respondents", "1", "--survey", "9",
                  "--telegram-api-url", fake.api_url])
    assert args.run(args) == 2
    assert "there is no survey '9'" in capsys.readouterr().err


def test_bad_answer_shares_are_refused_with_a_reason(capsys):
    assert parse_answers("Apple Pie=0.4, Pecan Pie=0.25") == {"Apple Pie": 0.4, "Pecan Pie": 0.25}
    with pytest.raises(ValueError, match="not OPTION=SHARE"):
        parse_answers("Apple Pie")
    with pytest.raises(ValueError, match="more than 1"):
        parse_answers("A=0.7,B=0.6")
    args = parse(["simulate", "--respondents", "1", "--answers", "Apple=lots", "--telegram-api-url", "http://x"])
    assert args.run(args) == 2
    assert "the share of 'Apple' is not a number" in capsys.readouterr().err
    with pytest.raises(ValueError, match="at least 1"):
        simulate("http://127.0.0.1:9", 0)


def test_simulate_without_a_bot_says_to_start_one():
    with FakeTelegramServer() as fake, pytest.raises(ConnectionError, match="survey-kit bot"):
        simulate(fake.api_url, 3)


def test_simulate_without_a_fake_telegram_says_to_start_one():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens there once the socket is closed
    with pytest.raises(ConnectionError, match=f"no fake Telegram answers at http://127.0.0.1:{port}: `survey-kit up`"):
        simulate(f"http://127.0.0.1:{port}", 3)


def test_planned_entries_have_late_and_out_of_order_timestamps():
    start = datetime(2026, 11, 25, tzinfo=UTC)
    planned = plan_entries(PIE, 200, start=start, interval=timedelta(seconds=10), late=12,
                           late_by=timedelta(hours=1), shuffle=3, seed=5)
    assert len(planned) == 200 and sum(p.late for p in planned) == 12
    assert all(p.timestamp < start for p in planned if p.late)
    times = [p.timestamp for p in planned if not p.late]
    assert times != sorted(times)  # shuffled
    assert len({p.entry["user_id"] for p in planned}) == 200 and len({p.entry_id for p in planned}) == 200
    assert plan_entries(PIE, 200, start=start, late=12, shuffle=3, seed=5)[0].entry == planned[0].entry
    with pytest.raises(ValueError, match="timezone-aware"):
        plan_entries(PIE, 1, start=datetime(2026, 11, 25))


def test_generated_entries_are_written_with_their_timestamps(cluster):
    planned = plan_entries(PIE, 50, start=datetime(2026, 11, 25, tzinfo=UTC), late=5, shuffle=2, seed=2)
    assert write_entries(cluster, planned) == 50
    messages = list(read_messages(cluster, cluster.topics.entries))
    assert [m.timestamp()[1] for m in messages] == [p.timestamp_ms for p in planned]
    assert [dict(m.headers())["entry_id"].decode() for m in messages] == [p.entry_id for p in planned]
