"""Run the notebooks headless with papermill: scheduled reports and CI.

>>> run_notebook("report", {"survey_id": "1"})
PosixPath('reports/04_report-20261125-120000')

Each run gets its own directory under ``reports/`` holding the executed notebook and whatever the
notebook wrote there: the directory is passed to the notebook as its ``output_dir`` parameter.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


class NotebookNotFound(LookupError):
    """No notebook of that name; the message lists the notebooks there are."""


def find_notebook(name: str, notebooks: Path = NOTEBOOKS) -> Path:
    """A notebook by file name (``04_report.ipynb``), stem (``04_report``) or short name (``report``)."""
    candidates = sorted(notebooks.glob("*.ipynb"))
    wanted = name.removesuffix(".ipynb")
    for path in candidates:
        if wanted in (path.stem, path.stem.split("_", 1)[-1]):
            return path
    names = ", ".join(path.stem for path in candidates) or "none"
    raise NotebookNotFound(f"no notebook called {name!r} in {notebooks}; the notebooks are: {names}")


def run_notebook(
    name: str,
    parameters: Mapping[str, Any] | None = None,
    output_root: str | Path = "reports",
    progress: bool = False,
) -> Path:
    """Execute a notebook with papermill; returns the run's directory (executed notebook + artifacts).

    Raises papermill's PapermillExecutionError, naming the failing cell, if the notebook fails; the
    partly executed notebook is still written for inspection.
    """
    import papermill

    notebook = find_notebook(name)
    run_dir = Path(output_root) / f"{notebook.stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    suffix = 1
    while run_dir.exists():
        suffix += 1
        run_dir = run_dir.with_name(f"{run_dir.name.split('.')[0]}.{suffix}")
    run_dir.mkdir(parents=True)
    papermill.execute_notebook(
        str(notebook),
        str(run_dir / notebook.name),
        parameters={**(parameters or {}), "output_dir": str(run_dir.resolve())},
        cwd=str(notebook.parent),
        progress_bar=progress,
        kernel_name="python3",
    )
    return run_dir
