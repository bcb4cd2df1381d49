"""`survey-kit bot`, `survey-kit simulate` and `survey-kit generate`: the bot's commands for the CLI.

Mounted by survey_kit.cli with `add_subcommands(commands)` (commands: its subparsers); each command sets
`run`, a function of the parsed arguments returning the exit code, and reads `args.config`.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

from ..cluster import connect
from ..config import load_settings
from ..surveys import SurveyError, get_survey, list_surveys
from .generator import plan_entries, write_entries
from .runner import BotRunner
from .simulate import Behaviour, parse_answers, simulate


def add_subcommands(commands) -> None:
    bot = commands.add_parser("bot", help="run the Telegram survey bot in the foreground")
    bot.add_argument("--data-dir", type=Path, help="outbox and subscribers (default ~/.survey-kit/bot)")
    bot.add_argument("--no-alerts", action="store_true", help="do not post final results to Telegram")
    bot.set_defaults(run=_reporting_bad_values(run_bot))

    sim = commands.add_parser("simulate", help="drive simulated respondents through the bot (fake Telegram)")
    sim.add_argument("--respondents", type=int, required=True, metavar="N", help="how many people answer")
    sim.add_argument("--survey", metavar="ID", help="the survey to answer when several are open")
    sim.add_argument("--rate", type=float, metavar="PER_S", help="new respondents per second (default: no limit)")
    sim.add_argument("--answers", metavar="SHARES", default="",
                     help='how answers are spread, e.g. "Apple Pie=0.4,Pecan Pie=0.2" (others share the rest)')
    sim.add_argument("--cancel", type=float, default=0.1, metavar="SHARE", help="share who give up (0.1)")
    sim.add_argument("--mistype", type=float, default=0.2, metavar="SHARE", help="share who mistype once (0.2)")
    sim.add_argument("--seed", type=int, help="random seed, for a repeatable run")
    sim.add_argument("--telegram-api-url", metavar="URL", help="the fake Telegram (default: the stack's)")
    sim.add_argument("--json", action="store_true", help="print one JSON document")
    sim.set_defaults(run=_reporting_bad_values(run_simulate))

    gen = commands.add_parser("generate", help="write survey entries straight to Kafka with chosen timestamps")
    gen.add_argument("--survey", metavar="ID", required=True, help="the survey the entries answer")
    gen.add_argument("--count", type=int, required=True, metavar="N", help="how many entries")
    gen.add_argument("--start", metavar="ISO_TIME", help="event time of the first entry (default: now, UTC)")
    gen.add_argument("--interval", type=float, default=1.0, metavar="SECONDS", help="event-time spacing (1)")
    gen.add_argument("--late", type=int, default=0, metavar="N", help="entries arriving late (0)")
    gen.add_argument("--late-by", type=float, default=900.0, metavar="SECONDS", help="how late (900)")
    gen.add_argument("--shuffle", type=int, default=0, metavar="K", help="swap entries up to K places (0)")
    gen.add_argument("--answers", metavar="SHARES", default="", help='e.g. "Apple Pie=0.4"')
    gen.add_argument("--seed", type=int, help="random seed")
    gen.set_defaults(run=_reporting_bad_values(run_generate))


def _reporting_bad_values(command):
    """Bad option values (ValueError with a message saying what to change) end with exit code 2, no traceback."""

    def run(args) -> int:
        try:
            return command(args)
        except ValueError as exc:
            print(f"survey-kit: error: {exc}", file=sys.stderr)
            return 2

    return run


def run_bot(args) -> int:
    """Run the bot until Ctrl-C or SIGTERM."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    runner = BotRunner(load_settings(args.config), data_dir=args.data_dir, alerts=not args.no_alerts).start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print(f"survey bot running ({runner.telegram}); Ctrl-C stops it", flush=True)
    try:
        while not stop.wait(1.0):
            if not runner.running:
                print("survey-kit: error: the bot stopped; see the log above", file=sys.stderr)
                return 1
    except KeyboardInterrupt:
        pass
    finally:
        runner.stop()
        status = runner.status()
        print(f"survey bot stopped: {status['confirmed']} entries confirmed, {status['outbox']} in the outbox")
    return 0


def _survey_label(cluster, survey_id: str) -> str:
    """The keyboard label of a survey, as the bot shows it when several are open."""
    survey = get_survey(cluster, survey_id)
    if not survey.enabled:
        raise SurveyError(f"survey {survey_id} is disabled: the bot does not offer it")
    same = [s for s in list_surveys(cluster) if s.enabled and s.summary == survey.summary]
    return survey.summary if len(same) == 1 else f"{survey.summary} ({survey.survey_id})"


def run_simulate(args) -> int:
    answers = parse_answers(args.answers)
    cluster = None
    api_url = args.telegram_api_url
    if api_url is None or args.survey:
        cluster = connect(load_settings(args.config))
        api_url = api_url or cluster.telegram_api_url
    if not api_url:
        raise ConnectionError("no fake Telegram is running: start the stack with `survey-kit up`, or give "
                              "--telegram-api-url (simulated respondents cannot use the real Telegram)")
    label = _survey_label(cluster, args.survey) if args.survey else None
    behaviour = Behaviour(cancel=args.cancel, mistype=args.mistype)
    progress = None
    if not args.json:
        from tqdm import tqdm

        bar = tqdm(total=args.respondents, unit="respondent", file=sys.stderr)
        progress = lambda: bar.update(1)  # noqa: E731
    report = simulate(api_url, args.respondents, survey_label=label, rate=args.rate, answers=answers,
                      behaviour=behaviour, seed=args.seed, progress=progress)
    if args.json:
        print(json.dumps(report))
    else:
        bar.close()
        print(f"{report['confirmed']} entries confirmed ({report['sent']} sent, {report['saved']} in the bot's "
              f"outbox), {report['cancelled']} cancelled, {report['refused']} refused, "
              f"{report['failed']} failed, {report['mistyped']} mistyped once; {report['seconds']} s")
        for failure in report.get("failures", []):
            print(f"  failed: {failure}", file=sys.stderr)
    return 0 if report["failed"] == 0 else 1


def run_generate(args) -> int:
    cluster = connect(load_settings(args.config))
    survey = get_survey(cluster, args.survey)
    try:
        start = datetime.fromisoformat(args.start) if args.start else datetime.now(UTC)
    except ValueError:
        raise ValueError(f"--start {args.start!r} is not an ISO time such as 2026-11-25T10:00:00+00:00") from None
    if start.tzinfo is None:
        start = start.replace(tzinfo=UTC)
    planned = plan_entries(survey, args.count, start=start, interval=timedelta(seconds=args.interval),
                           late=args.late, late_by=timedelta(seconds=args.late_by), shuffle=args.shuffle,
                           answers=parse_answers(args.answers), seed=args.seed)
    written = write_entries(cluster, planned)
    print(f"{written} entries written to {cluster.topics.entries} ({args.late} late)")
    return 0
