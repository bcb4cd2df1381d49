"""The `ksql/` statement files of the survey pipeline: find them, read them with overrides.

    for script in read_pipeline("ksql", {"results_window_size": "5 MINUTES"}):
        engine.execute(script.text)        # or POST script.text to a ksqlDB server

Files are applied in name order (`01_...sql`, `02_...sql`, ...). An override
replaces the value of the file's own `DEFINE name = '...'` statement.

The variables a file DEFINEs are also substituted here, in the statements that
follow the DEFINE: ksqlDB's own parser accepts `${name}` only where a literal
or an identifier may stand, not as a WINDOW size or grace period (its grammar
wants a number and a unit keyword there). The scripts returned are therefore
valid for a ksqlDB server and for the embedded engine alike.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from . import ast
from .parser import parse_statement, split_statements
from .types import KsqlError

# The project's own pipeline (the repository's ksql/ folder, beside the package): what `survey-kit ksql
# apply` and `check` read when no folder is given, from whatever directory they are run.
PIPELINE_DIR = Path(__file__).resolve().parents[2] / "ksql"


@dataclass(frozen=True)
class PipelineScript:
    path: Path
    text: str


def pipeline_files(directory: str | Path) -> list[Path]:
    """The `*.sql` files of `directory`, in the order they are applied."""
    folder = Path(directory)
    if not folder.is_dir():
        raise KsqlError(f"{folder} is not a directory of ksql statement files (*.sql): give the folder that holds "
                        f"them (the survey pipeline's is {PIPELINE_DIR}).")
    files = sorted(folder.glob("*.sql"))
    if not files:
        raise KsqlError(f"{folder} holds no *.sql statement files.")
    return files


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _substitute_known(text: str, variables: dict[str, str]) -> str:
    """Replace `${name}` for the variables given (case-insensitive); leave any other reference."""
    return _VARIABLE.sub(lambda m: variables.get(m.group(1).lower(), m.group(0)), text)


def read_pipeline(directory: str | Path, overrides: dict[str, str] | None = None) -> list[PipelineScript]:
    """Read the pipeline's files, with `overrides` replacing their DEFINE'd values.

    An override naming a variable no file defines is an error (most likely a typo).
    """
    wanted = {k.lower(): v for k, v in (overrides or {}).items()}
    used: set[str] = set()
    scripts = []
    for path in pipeline_files(directory):
        statements = []
        defined: dict[str, str] = {}
        for piece in split_statements(path.read_text()):
            text = _substitute_known(piece.text, defined)
            if text.split(None, 1)[0].upper() == "DEFINE":
                node = parse_statement(piece)
                assert isinstance(node, ast.Define)
                value = node.value
                if node.name in wanted:
                    value = wanted[node.name]
                    text = f"DEFINE {node.name} = {_quote(value)}"
                    used.add(node.name)
                defined[node.name] = value
            statements.append(text + ";")
        scripts.append(PipelineScript(path, "\n".join(statements) + "\n"))
    unknown = sorted(set(wanted) - used)
    if unknown:
        raise KsqlError(f"No statement file defines the variable(s) {', '.join(unknown)}; check the names in {directory}.")
    return scripts
