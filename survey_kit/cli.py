"""The ``survey-kit`` command.

    survey-kit up | down | status [--json]      the embedded stack (status: the configured services, if any)
    survey-kit topics create                    the survey topics
    survey-kit survey create | list | disable   surveys on survey-questions
    survey-kit engine                           the ksql engine (ksqlDB REST API) in the foreground
    survey-kit ksql apply | check | test        the ksql pipeline
    survey-kit bot | simulate | generate        the Telegram survey bot, simulated respondents, test entries
    survey-kit report --notebook NAME -p K V    run a notebook headless with papermill (under reports/)
    survey-kit demo                             the whole data path on the embedded stack, ending in a report

``--config PATH`` (or $SURVEY_KIT_CONFIG, or ./survey-kit.yaml) points every command at real
infrastructure instead of the embedded stack.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import sys
from collections.abc import Sequence

from confluent_kafka import KafkaException
from confluent_kafka.serialization import SerializationError

from . import stack as embedded
from .cluster import connect
from .config import ConfigError, load_settings
from .consume import MalformedRecord
from .stack.services import SERVICES
from .surveys import Survey, SurveyError, create_survey, disable_survey, list_surveys
from .topics import create_topics

# Errors whose message is the whole story for a user: printed without a traceback.
USER_ERRORS = (ConfigError, embedded.StackError, SurveyError, ConnectionError, TimeoutError, LookupError, MalformedRecord)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help()
        return 2
    try:
        code = args.run(args) or 0
        sys.stdout.flush()  # a reader gone before the last of the output: noticed here, not at exit
        return code
    except BrokenPipeError as exc:
        if not _stdout_closed():
            print(f"survey-kit: error: {exc}", file=sys.stderr)
            return 1
        # whoever read the output has gone (`survey-kit status | head -1`): stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit's flush does not fail again
        return 141
    except USER_ERRORS as exc:
        print(f"survey-kit: error: {exc}", file=sys.stderr)
        return 1
    except SerializationError as exc:  # Avro through the Schema Registry: mostly a registry that does not answer
        print(f"survey-kit: error: writing or reading Avro through the Schema Registry failed: {_kafka_text(exc)}. "
              "Check that the Schema Registry answers: `survey-kit status` for the embedded one (`survey-kit up` "
              "starts what stopped), schema_registry.url in survey-kit.yaml for another", file=sys.stderr)
        return 1
    except KafkaException as exc:
        print(f"survey-kit: Kafka error: {_kafka_text(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _stdout_closed() -> bool:
    """Whether stdout is a pipe nobody reads any more (its write end polls as an error)."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (OSError, ValueError):  # no file descriptor (captured output): not a pipe of ours
        return False


def _kafka_text(exc: KafkaException) -> str:
    error = exc.args[0] if exc.args else exc
    return error.str() if hasattr(error, "str") else str(error)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="survey-kit", description="Real-time survey analysis on Apache Kafka.")
    parser.add_argument("--config", metavar="PATH", help="settings file (default: ./survey-kit.yaml if present)")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    up = commands.add_parser("up", help="start the embedded stack on 127.0.0.1")
    for service in SERVICES.values():
        up.add_argument(service.port_option, type=int, metavar="PORT", dest=f"{service.name}_port",
                        help=f"port of the {service.title} (default {service.default_port})")
    up.set_defaults(run=_up)

    down = commands.add_parser("down", help="stop the embedded stack started by `up`")
    down.set_defaults(run=_down)

    status = commands.add_parser("status", help="whether the services answer: the embedded stack's, or the configured ones")
    status.add_argument("--json", action="store_true", help="print JSON with each service's address")
    status.set_defaults(run=_status)

    topics = commands.add_parser("topics", help="the survey topics").add_subparsers(metavar="ACTION")
    topics.add_parser("create", help="create the survey topics (idempotent)").set_defaults(run=_topics_create)

    survey = commands.add_parser("survey", help="define surveys").add_subparsers(metavar="ACTION")
    create = survey.add_parser("create", help="publish a survey on survey-questions")
    create.add_argument("--id", required=True, dest="survey_id")
    create.add_argument("--question", required=True)
    create.add_argument("--summary", required=True)
    create.add_argument("--option", action="append", default=[], dest="options", help="an answer; repeat")
    create.add_argument("--disabled", action="store_true", help="publish it without offering it yet")
    create.set_defaults(run=_survey_create)
    survey.add_parser("list", help="list the surveys").set_defaults(run=_survey_list)
    disable = survey.add_parser("disable", help="stop offering a survey")
    disable.add_argument("survey_id", metavar="ID")
    disable.set_defaults(run=_survey_disable)

    engine = commands.add_parser("engine", help="run the ksql engine and its REST API in the foreground")
    engine.add_argument("--port", type=int, default=8088, help="port of its ksqlDB-compatible REST API (default 8088)")
    engine.add_argument("--data-dir", default="engine-data", help="folder for its copy of the statements (default ./engine-data)")
    engine.add_argument("--workers", type=int, default=2, help="processes the queries are spread over (default 2; one core each)")
    engine.set_defaults(run=_engine)

    from .ksql.cli import add_subcommands
    from .ksql.pipeline import PIPELINE_DIR

    ksql = commands.add_parser("ksql", help="the ksql pipeline: apply it, check it, run conformance tests")
    ksql.set_defaults(run=lambda args: args.func(args) if hasattr(args, "func") else ksql.print_help() or 2)
    ksql_commands = ksql.add_subparsers(metavar="ACTION")
    apply = ksql_commands.add_parser("apply", help="apply the ksql/ statement files to ksqlDB or the embedded engine")
    apply.add_argument("directory", nargs="?", default=PIPELINE_DIR, metavar="DIR",
                       help=f"folder of *.sql files (default: the survey pipeline, {PIPELINE_DIR})")
    apply.add_argument("--define", action="append", default=[], metavar="NAME=VALUE", help="override a DEFINE'd variable")
    apply.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", dest="properties",
                       help="a property for the queries created (as ksqlDB's SET), e.g. survey_kit.emit.final.wall.clock=true")
    apply.set_defaults(func=_ksql_apply)
    run = ksql_commands.add_parser("run", help="run statements on ksqlDB or the embedded engine and show the answers "
                                               "(SHOW QUERIES; DESCRIBE ...; EXPLAIN ...; DROP ...; TERMINATE ...)")
    run.add_argument("statements", metavar="STATEMENTS", help="semicolon-terminated statements, or - to read them from stdin")
    run.add_argument("--define", action="append", default=[], metavar="NAME=VALUE", help="a variable for ${NAME} in the statements")
    run.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", dest="properties",
                     help="a property for the queries created (as ksqlDB's SET)")
    run.add_argument("--json", action="store_true", help="print the server's answer as JSON")
    run.set_defaults(func=_ksql_run)
    add_subcommands(ksql_commands)

    from .bot.cli import add_subcommands as add_bot_subcommands

    add_bot_subcommands(commands)

    report = commands.add_parser("report", help="run a notebook headless with papermill; results under reports/")
    report.add_argument("--notebook", required=True, metavar="NAME", help="e.g. report, 04_report or 04_report.ipynb")
    report.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"),
                        help="a notebook parameter, typed as the notebook's default: text stays text "
                             "(survey_id 1), numbers and booleans are read as YAML (300, true)")
    report.add_argument("--output", default="reports", metavar="DIR", help="where run folders go (default reports/)")
    report.set_defaults(run=_report)

    demo = commands.add_parser("demo", help="the whole data path on the embedded stack, ending in an HTML report")
    demo.add_argument("--respondents", type=int, default=300, metavar="N", help="simulated respondents (default 300)")
    demo.add_argument("--output", default="reports", metavar="DIR", help="where run folders go (default reports/)")
    demo.set_defaults(run=_demo)
    return parser


def _demo(args) -> int:
    from .reports import NotebookFailed, run_demo

    try:
        report = run_demo(args.respondents, args.output)
    except NotebookFailed as exc:
        print(f"survey-kit: error: {exc.summary()}", file=sys.stderr)
        return 1
    print(f"\nThe report: {report.resolve()}")
    return 0


def _report(args) -> int:
    from .reports import NotebookFailed, parse_parameters, run_notebook

    from .config import settings_file

    parameters = parse_parameters(args.notebook, args.parameter)
    load_settings(args.config)  # a bad settings file is refused here, not in the notebook's first cell
    try:
        # the kernel runs in notebooks/: it gets the settings file this command reads (--config or ./survey-kit.yaml)
        run_dir = run_notebook(args.notebook, parameters, args.output, progress=True, config=settings_file(args.config))
    except NotebookFailed as exc:
        print(f"survey-kit: error: {exc.summary()}", file=sys.stderr)
        return 1
    print(f"executed notebook and its files: {run_dir}")
    return 0


def _up(args) -> int:
    ports = {name: getattr(args, f"{name}_port") for name in SERVICES}
    stack, started = embedded.up(ports)
    print("embedded stack started" if started else "embedded stack already running")
    for name in stack.restarted:
        print(f"  started again: the {SERVICES[name].title}, which had stopped (its log: {stack.records[name].log})")
    for key, address in stack.addresses.items():
        print(f"  {key:<22} {address}")
    print(f"  {'data_dir':<22} {stack.data_dir}")
    return 0


def _down(args) -> int:
    stack = embedded.down()
    print("embedded stack stopped" if stack else "no embedded stack was running")
    return 0


def _status(args) -> int:
    settings = load_settings(args.config)
    if not settings.uses_embedded_kafka:
        return _configured_status(connect(settings), args.json)
    stack = embedded.running_stack()
    if stack is None:
        if args.json:
            print(json.dumps({"running": False}))
        else:
            print("no embedded stack is running (start it with `survey-kit up`)")
        return 1
    services = stack.status()
    if args.json:
        print(json.dumps({"running": True, **stack.addresses, "data_dir": str(stack.data_dir), "services": services}, indent=2))
    else:
        for name, info in services.items():
            state = "answers" if info["answers"] else ("runs, not answering" if info["running"] else "stopped")
            print(f"{info['title']:<24} {info['address']:<26} pid {info['pid']}  {state}")
        stopped = [info["title"] for info in services.values() if not info["running"]]
        if stopped:
            print(f"{', '.join(stopped)} stopped: `survey-kit up` starts {'it' if len(stopped) == 1 else 'them'} again")
    return 0 if all(info["answers"] for info in services.values()) else 1


def _configured_status(cluster, as_json: bool) -> int:
    """`status` with Kafka configured: whether each configured service answers, and what it holds."""
    from .ksql.apply import ksql_client  # the ksql package is only needed here and by the ksql commands

    def kafka() -> str:
        admin = cluster.request_admin()
        try:
            metadata = admin.metadata(timeout=10)
        except KafkaException as exc:
            raise ConnectionError(f"{exc.args[0].str()}{admin.reason()}") from None
        missing = [name for name in cluster.topics.model_dump().values() if name not in metadata.topics]
        brokers = f"{len(metadata.brokers)} broker{'s' if len(metadata.brokers) != 1 else ''}"
        if missing:
            return f"{brokers}; no topic {', '.join(missing)} yet: `survey-kit topics create` creates them"
        return f"{brokers}; the survey topics are there"

    def registry() -> str:
        try:
            subjects = cluster.registry().get_subjects()
        except Exception as exc:  # the registry client raises its own errors and httpx's
            raise ConnectionError(f"{type(exc).__name__}: {exc} (check schema_registry.url and basic_auth_user_info)") from None
        return f"{len(subjects)} subject{'s' if len(subjects) != 1 else ''}"

    def ksqldb() -> str:
        with ksql_client(cluster) as client:
            queries = client.execute("SHOW QUERIES;")[0].get("queries", [])
        return f"{len(queries)} quer{'ies' if len(queries) != 1 else 'y'} running"

    settings = cluster.settings
    checks = [("kafka", "Kafka", cluster.bootstrap_servers, kafka),
              ("schema_registry", "Schema Registry", cluster.schema_registry_url, registry)]
    if settings.ksqldb.url:
        checks.append(("ksqldb", "ksqlDB", settings.ksqldb.url, ksqldb))
    services = {}
    for key, title, address, check in checks:
        try:
            services[key] = {"title": title, "address": address, "answers": True, "detail": check()}
        except Exception as exc:  # noqa: BLE001 -- every failure is the service's state, reported as such
            services[key] = {"title": title, "address": address, "answers": False, "detail": str(exc)}
    if not settings.ksqldb.url:
        services["ksqldb"] = {"title": "ksqlDB", "address": None, "answers": None,
                              "detail": "not configured: set ksqldb.url, or run the embedded engine on this Kafka with `survey-kit engine`"}
    if settings.telegram.token is not None:
        telegram = "a bot token is set (api.telegram.org, not contacted here)"
    elif cluster.telegram_api_url:
        telegram = f"no token: the embedded stack's fake Telegram at {cluster.telegram_api_url}"
    else:
        telegram = "no token and no embedded stack: set telegram.token for the bot"
    services["telegram"] = {"title": "Telegram", "address": None, "answers": None, "detail": telegram}
    if as_json:
        print(json.dumps({"running": False, "configured": True, "bootstrap_servers": cluster.bootstrap_servers,
                          "schema_registry_url": cluster.schema_registry_url, "ksqldb_url": settings.ksqldb.url,
                          "services": services}, indent=2))
    else:
        for info in services.values():
            state = {True: "answers", False: "does not answer", None: ""}[info["answers"]]
            where = f"{info['address']} {state}" if info["address"] else state
            print(f"{info['title']:<16} {where}: {info['detail']}" if where else f"{info['title']:<16} {info['detail']}")
    return 0 if all(info["answers"] is not False for info in services.values()) else 1


def _cluster(args):
    return connect(load_settings(args.config))


def _topics_create(args) -> int:
    for report in create_topics(_cluster(args)):
        note = f"  ({report.note})" if report.note else ""
        print(f"{report.status:<8} {report.name} ({report.partitions} partitions){note}")
    return 0


def _survey_create(args) -> int:
    survey = Survey(args.survey_id, args.question, args.summary, args.options, enabled=not args.disabled)
    create_survey(_cluster(args), survey)
    print(f"survey {survey.survey_id} published ({'enabled' if survey.enabled else 'disabled'})")
    return 0


def _survey_list(args) -> int:
    surveys = list_surveys(_cluster(args))
    if not surveys:
        print("no surveys yet: create one with `survey-kit survey create`")
    for survey in surveys:
        state = "enabled" if survey.enabled else "disabled"
        print(f"{survey.survey_id:<10} {state:<9} {survey.question}  [{' | '.join(survey.options)}]")
    return 0


def _survey_disable(args) -> int:
    disable_survey(_cluster(args), args.survey_id)
    print(f"survey {args.survey_id} disabled")
    return 0


def _engine(args) -> int:
    from .ksql.server import serve

    return serve(_cluster(args), port=args.port, data_dir=args.data_dir, workers=args.workers)


def _ksql_apply(args) -> int:
    from .ksql.apply import ApplyError, apply_pipeline, ksql_client, register_value_schemas
    from .ksql.cli import _parse_defines
    from .ksql.pipeline import read_pipeline
    from .ksql.types import KsqlError

    cluster = _cluster(args)
    try:
        overrides = _parse_defines(args.define)
        properties = _parse_defines(args.properties)
        read_pipeline(args.directory, overrides)  # a wrong directory or variable changes nothing on the server
        with ksql_client(cluster) as client:
            # the streams infer their columns from the registry: a fresh cluster has no schemas yet
            for subject in register_value_schemas(cluster):
                print(f"schema registered for {subject}")
            for applied in apply_pipeline(client, args.directory, overrides, properties):
                print(f"{applied.path.name}: {applied.message}")
    except (ApplyError, KsqlError) as exc:
        print(f"survey-kit: error: {exc}", file=sys.stderr)
        return 1
    return 0


def _ksql_run(args) -> int:
    from .ksql.apply import ksql_client
    from .ksql.cli import _parse_defines
    from .ksql.entities import entity_lines
    from .ksql.rest import KsqlServerError
    from .ksql.types import KsqlError

    statements = sys.stdin.read() if args.statements == "-" else args.statements
    if not statements.strip():
        print("survey-kit: error: no statements given; e.g. survey-kit ksql run 'SHOW QUERIES;'", file=sys.stderr)
        return 2
    try:
        variables = _parse_defines(args.define)
        properties = _parse_defines(args.properties)
        with ksql_client(_cluster(args)) as client:
            entities = client.execute(statements, properties, variables)
    except (KsqlServerError, KsqlError) as exc:  # the server's refusal, or a malformed --define / --set
        print(f"survey-kit: error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(entities, indent=2))
    elif not entities:
        # SET / DEFINE answer nothing: over the REST API they hold for the request they are sent with only
        print("done; the server answered nothing to show (SET and DEFINE hold only for the statements sent with "
              "them: give those in the same call, or use --set / --define)")
    else:
        for line in entity_lines(entities):
            print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
