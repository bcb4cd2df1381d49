"""Command-line entry points of the ksql engine, mountable under `survey-kit ksql`.

    survey-kit ksql test FILE.json... [--case NAME] [--json]   run ksqlDB QTT files
    survey-kit ksql check [DIR] [--define NAME=VALUE ...]      plan the pipeline files, no broker

`add_subcommands(subparsers)` adds them to an argparse subparsers object;
`main(argv)` runs them stand-alone (`python -m survey_kit.ksql.cli test ...`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .engine import Engine
from .formats import InMemorySchemaStore
from .pipeline import PIPELINE_DIR, read_pipeline
from .qtt import run_files
from .types import KsqlError


def _test(args: argparse.Namespace) -> int:
    missing = [f for f in args.files if not Path(f).is_file()]
    if missing:
        print(f"error: no such QTT file: {', '.join(missing)}", file=sys.stderr)
        return 2
    try:
        report = run_files(args.files, case=args.case)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.case is not None and not report.cases:
        print(f"error: no case named {args.case!r} in {', '.join(args.files)}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print(report.to_text())
    return 1 if report.failed else 0


def _parse_defines(pairs: list[str]) -> dict[str, str]:
    defines = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise KsqlError(f"--define expects NAME=VALUE, got {pair!r}")
        defines[name.strip()] = value
    return defines


def _check(args: argparse.Namespace) -> int:
    """Plan every statement of the pipeline against the talk's schemas (nothing is started)."""
    from survey_kit.schemas import load_schema

    store = InMemorySchemaStore()
    for name in ("survey-entries", "survey-questions"):
        store.register(f"{name}-value", load_schema(name))
    engine = Engine(schemas=store)
    try:
        for script in read_pipeline(args.directory, _parse_defines(args.define)):
            for result in engine.execute(script.text):
                print(f"{script.path.name}: {result.message}")
    except KsqlError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for query in engine.queries.values():
        print(f"{query.query_id}: {query.plan.describe()}")
    return 0


def add_subcommands(subparsers) -> None:
    """Add `test` and `check` to an argparse subparsers object (e.g. that of `survey-kit ksql`)."""
    test = subparsers.add_parser("test", help="run ksqlDB query-validation-test files against the embedded engine")
    test.add_argument("files", nargs="+", metavar="FILE.json", help="QTT files, e.g. ../shared/qtt/histogram.json")
    test.add_argument("--case", help="run only the case with this name (with or without its ' - FORMAT' suffix)")
    test.add_argument("--json", action="store_true", help="print one JSON document instead of text")
    test.set_defaults(func=_test)

    check = subparsers.add_parser("check", help="parse and plan the ksql/ statement files with the embedded engine")
    check.add_argument("directory", nargs="?", default=PIPELINE_DIR, metavar="DIR",
                       help=f"folder of *.sql files (default: the survey pipeline, {PIPELINE_DIR})")
    check.add_argument("--define", action="append", default=[], metavar="NAME=VALUE", help="override a DEFINE'd variable")
    check.set_defaults(func=_check)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="survey-kit ksql", description="The embedded ksqlDB-compatible engine.")
    add_subcommands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
