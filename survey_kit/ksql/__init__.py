"""The embedded ksqlDB-compatible engine that runs the `ksql/` statement files.

Layered like ksqlDB: `parser` (lark grammar `ksql.lark`) -> `ast` statements ->
`planner` logical plans -> `operators` physical operators, a pure core with
explicit `state` stores and no Kafka I/O. `Engine` is the entry point;
`driver.Driver` runs it without a broker; `qtt` runs ksqlDB's conformance tests.
"""

from .driver import DecodedRecord, Driver
from .engine import EMIT_FINAL_WALL_CLOCK, Engine, StatementResult
from .formats import InMemorySchemaStore, RegistrySchemaStore, SchemaStore
from .operators import OutputRecord
from .pipeline import PipelineScript, pipeline_files, read_pipeline
from .types import KsqlError

__all__ = [
    "DecodedRecord",
    "Driver",
    "EMIT_FINAL_WALL_CLOCK",
    "Engine",
    "InMemorySchemaStore",
    "KsqlError",
    "OutputRecord",
    "PipelineScript",
    "RegistrySchemaStore",
    "SchemaStore",
    "StatementResult",
    "pipeline_files",
    "read_pipeline",
]
