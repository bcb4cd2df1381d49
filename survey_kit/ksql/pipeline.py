"""The `ksql/` statement files of the survey pipeline: find them, read them with overrides.

    for script in read_pipeline("ksql", {"results_window_size": "5 MINUTES"}):
        engine.execute(script.text)        # or POST script.text to a ksqlDB server

Files are applied in name order (`01_...sql`, `02_...sql`, ...). An override
replaces the value of the file's own `DEFINE name = '...'` statement, so the
same files run unchanged on a ksqlDB server, where variables live for one
request only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from . import ast
from .parser import parse_statement, split_statements
from .types import KsqlError


@dataclass(frozen=True)
class PipelineScript:
    path: Path
    text: str


def pipeline_files(directory: str | Path) -> list[Path]:
    """The `*.sql` files of `directory`, in the order they are applied."""
    folder = Path(directory)
    if not folder.is_dir():
        raise KsqlError(f"{folder} is not a directory of ksql statement files (*.sql).")
    files = sorted(folder.glob("*.sql"))
    if not files:
        raise KsqlError(f"{folder} holds no *.sql statement files.")
    return files


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def read_pipeline(directory: str | Path, overrides: dict[str, str] | None = None) -> list[PipelineScript]:
    """Read the pipeline's files, with `overrides` replacing their DEFINE'd values.

    An override naming a variable no file defines is an error (most likely a typo).
    """
    wanted = {k.lower(): v for k, v in (overrides or {}).items()}
    used: set[str] = set()
    scripts = []
    for path in pipeline_files(directory):
        statements = []
        for piece in split_statements(path.read_text()):
            text = piece.text
            if text.split(None, 1)[0].upper() == "DEFINE":
                node = parse_statement(piece)
                assert isinstance(node, ast.Define)
                if node.name in wanted:
                    text = f"DEFINE {node.name} = {_quote(wanted[node.name])}"
                    used.add(node.name)
            statements.append(text + ";")
        scripts.append(PipelineScript(path, "\n".join(statements) + "\n"))
    unknown = sorted(set(wanted) - used)
    if unknown:
        raise KsqlError(f"No statement file defines the variable(s) {', '.join(unknown)}; check the names in {directory}.")
    return scripts
