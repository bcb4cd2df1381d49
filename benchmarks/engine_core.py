"""How fast the ksql engine's pure core runs the talk's pipeline (ksql/), in this process, with no Kafka.

    .venv/bin/python benchmarks/engine_core.py [--entries 200000] [--commit-every 1000]

Tells the core apart from the Kafka runtime (benchmarks/engine.py measures both together): the same
synthetic survey entries as benchmarks/engine.py (Avro values, 20 surveys, one question per survey) are
fed to `Engine.process_batch` in batches of `--commit-every` records; after each batch the engine does
what the runtime does at a commit (`flush` the record cache, `drain_changes` for the changelog). The
engine runs with the runtime's default properties (record cache on).

Printed, side by side: the core's entries/s over the four queries, and the in-process ceiling: the same
values Avro-decoded (fastavro, parsed schema reused) with no processing. The prepared inputs are
frozen out of the cyclic GC, as the engine's server freezes its start-up heap.
"""

from __future__ import annotations

import argparse
import gc
import io
import json
import struct
import sys
import time
from pathlib import Path

import fastavro

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from survey_kit.ksql.engine import Engine  # noqa: E402
from survey_kit.ksql.formats import InMemorySchemaStore  # noqa: E402
from survey_kit.ksql.pipeline import read_pipeline  # noqa: E402
from survey_kit.ksql.runtime import RUNTIME_DEFAULT_PROPERTIES  # noqa: E402
from survey_kit.schemas import load_schema  # noqa: E402
from workload import SURVEYS, entry_pool, question  # noqa: E402  (benchmarks/, the script's folder)

KSQL_DIR = Path(__file__).resolve().parent.parent / "ksql"


def avro_bytes(schema_id: int, parsed, record: dict) -> bytes:
    out = io.BytesIO()
    out.write(b"\x00" + struct.pack(">I", schema_id))
    fastavro.schemaless_writer(out, parsed, record)
    return out.getvalue()


def pipeline_engine() -> tuple[Engine, InMemorySchemaStore]:
    store = InMemorySchemaStore()
    store.register("survey-entries-value", load_schema("survey-entries"))
    store.register("survey-questions-value", load_schema("survey-questions"))
    engine = Engine(schemas=store, properties=dict(RUNTIME_DEFAULT_PROPERTIES))
    for script in read_pipeline(KSQL_DIR):
        engine.execute(script.text)
    return engine, store


def inputs(store: InMemorySchemaStore, count: int, start_ms: int) -> tuple[list, list]:
    """(questions, entries) as (topic, partition, offset, timestamp, key, value) tuples, as benchmarks/engine.py produces them."""
    entry_id, entry_schema = store.latest("survey-entries-value")
    question_id, question_schema = store.latest("survey-questions-value")
    entry_parsed = fastavro.parse_schema(json.loads(entry_schema))
    question_parsed = fastavro.parse_schema(json.loads(question_schema))
    questions = [
        ("survey-questions", 0, s, start_ms - 1, str(s).encode(), avro_bytes(question_id, question_parsed, question(s)))
        for s in range(SURVEYS)
    ]
    pool = [(entry["survey_id"].encode(), avro_bytes(entry_id, entry_parsed, entry)) for entry in entry_pool()]
    entries = [("survey-entries", 0, i, start_ms + i, *pool[i % len(pool)]) for i in range(count)]
    return questions, entries


def ceiling(entries: list) -> float:
    """Entries/s of Avro-decoding the values with no processing (writer schema parsed once)."""
    parsed = None
    started = time.perf_counter()
    for *_, value in entries:
        if parsed is None:
            parsed = fastavro.parse_schema(json.loads(STORE.schema_by_id(struct.unpack(">I", value[1:5])[0])))
        fastavro.schemaless_reader(io.BytesIO(value[5:]), parsed, None)
    return len(entries) / (time.perf_counter() - started)


def core(engine: Engine, questions: list, entries: list, commit_every: int) -> tuple[float, int]:
    """Entries/s of the four queries over the entries, with a commit (flush + drain) every `commit_every`."""
    engine.process_batch(questions)
    engine.flush()
    engine.drain_changes()
    produced = 0
    started = time.perf_counter()
    for i in range(0, len(entries), commit_every):
        produced += len(engine.process_batch(entries[i:i + commit_every]))
        produced += len(engine.flush())
        engine.drain_changes()
    return len(entries) / (time.perf_counter() - started), produced


def main(argv: list[str] | None = None) -> int:
    global STORE
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entries", type=int, default=200_000, help="entries pushed through the pipeline (default 200,000)")
    parser.add_argument("--commit-every", type=int, default=1_000, help="records between commits (flush + drain), default 1,000")
    parser.add_argument("--profile", action="store_true", help="run the core under cProfile and print the top functions")
    args = parser.parse_args(argv)

    engine, STORE = pipeline_engine()
    questions, entries = inputs(STORE, args.entries, start_ms=1_700_000_000_000)
    # the engine's server freezes its start-up heap out of the cyclic GC; the inputs prepared here are
    # start-up heap too (the runtime's records are short-lived): without this, full collections walking
    # the prepared entries would be charged to whichever query happens to allocate at that moment
    gc.collect()
    gc.freeze()
    print(f"{args.entries:,} entries, {SURVEYS} surveys, commit every {args.commit_every:,} records")
    ceiling_rate = max(ceiling(entries) for _ in range(3))  # best of three: other work on a shared machine only slows it
    print(f"ceiling (Avro decode only): {ceiling_rate:,.0f} entries/s")
    if args.profile:
        import cProfile
        import pstats

        profiler = cProfile.Profile()
        profiler.enable()
    rate, produced = core(engine, questions, entries, args.commit_every)
    if args.profile:
        profiler.disable()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
    print(f"core (4 queries, in-process): {rate:,.0f} entries/s = {rate / ceiling_rate:.0%} of the decode ceiling, "
          f"{1e6 / rate:.1f} µs per entry; {produced:,} records out")
    return 0


STORE: InMemorySchemaStore


if __name__ == "__main__":
    sys.exit(main())
