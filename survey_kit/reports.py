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

from jupyter_client.manager import AsyncKernelManager

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


class _LocalKernelManager(AsyncKernelManager):
    """Kernels talking to papermill over Unix sockets (beside their connection file), not TCP ports.

    The kernel runs on this machine only: with TCP, ipykernel warns every run that its traffic is
    unencrypted (and takes ports a stack may want).
    """

    transport = "ipc"


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
        kernel_manager_class=_LocalKernelManager,
    )
    return run_dir


def run_demo(respondents: int = 300, output_root: str | Path = "reports", window_size: str = "30 SECONDS",
             grace: str = "5 SECONDS") -> Path:
    """The whole data path on the embedded stack: workshop (bot + simulated respondents), comparison, report.

    Starts the stack unless one runs (and then stops only what it started); returns the report's path.
    """
    from . import stack as embedded

    running, started = embedded.up()
    try:
        print(f"stack {'started' if started else 'already running'}: Kafka at {running.bootstrap_servers}", flush=True)
        windows = {"window_size": window_size, "grace": grace}
        for name, parameters in (
            ("workshop", {"respondents": respondents, "duration_s": 120, **windows}),
            ("live_vs_windowed", windows),
            ("report", windows),
        ):
            run_dir = run_notebook(name, parameters, output_root, progress=True)
            print(f"{name}: {run_dir}", flush=True)
        return run_dir / "report.html"
    finally:
        if started:
            embedded.down()
