"""Run the notebooks headless with papermill: scheduled reports and CI.

>>> run_notebook("report", {"survey_id": "1"})
PosixPath('reports/04_report-20261125-120000')

Each run gets its own directory under ``reports/`` holding the executed notebook and whatever the
notebook wrote there: the directory is passed to the notebook as its ``output_dir`` parameter.
"""

from __future__ import annotations

import ast
import json
import os
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import papermill
import yaml
from jupyter_client.manager import AsyncKernelManager
from papermill import PapermillExecutionError

from .widgets import HEADLESS

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


class _LocalKernelManager(AsyncKernelManager):
    """Kernels talking to papermill over Unix sockets (beside their connection file), not TCP ports.

    The kernel runs on this machine only: with TCP, ipykernel warns every run that its traffic is
    unencrypted (and takes ports a stack may want).
    """

    transport = "ipc"
    kernel_environment: dict[str, str] = {}  # set on a subclass per run (`_kernel_manager`)

    async def start_kernel(self, **kw: Any) -> None:
        kw["env"] = {**kw.get("env", os.environ), **self.kernel_environment}
        await super().start_kernel(**kw)

    async def _async_interrupt_kernel(self) -> None:
        # jupyter_client sends SIGINT before every shutdown; papermill shuts the kernel down only once its
        # cells are done, so nothing needs interrupting, and a SIGINT that lands while the kernel handles a
        # message printed "ERROR | KeyboardInterrupt caught in kernel." in the middle of `make demo`
        if self.shutting_down:
            return
        await super()._async_interrupt_kernel()


def _kernel_manager(config: Path | None) -> type[_LocalKernelManager]:
    """The kernel manager for one run: its kernel reads the settings file `config` (None: as its environment
    says) and knows it runs headless (its charts are drawn as pictures: `widgets.render_charts_offline`)."""
    environment = {HEADLESS: "1"}
    if config is not None:
        environment["SURVEY_KIT_CONFIG"] = str(config)
    return type("_RunKernelManager", (_LocalKernelManager,), {"kernel_environment": environment})


class NotebookNotFound(LookupError):
    """No notebook of that name; the message lists the notebooks there are."""


class UnknownParameter(LookupError):
    """A parameter the notebook does not declare; the message lists those it does."""


class NotebookFailed(PapermillExecutionError):
    """A cell of the notebook raised: papermill's error, with where the partly executed notebook is (`executed`)."""

    def __init__(self, error: PapermillExecutionError, executed: Path):
        super().__init__(error.cell_index, error.exec_count, error.source, error.ename, error.evalue, error.traceback)
        self.executed = executed

    def summary(self) -> str:
        """One paragraph for a command line: the cell, the error, the executed notebook."""
        return (f"{self.executed.name} failed in cell [{self.exec_count}]: {self.ename}: {self.evalue}\n"
                f"the partly executed notebook, with the traceback: {self.executed}")


def find_notebook(name: str, notebooks: Path = NOTEBOOKS) -> Path:
    """A notebook by file name (``04_report.ipynb``), stem (``04_report``) or short name (``report``)."""
    candidates = sorted(notebooks.glob("*.ipynb"))
    wanted = name.removesuffix(".ipynb")
    for path in candidates:
        if wanted in (path.stem, path.stem.split("_", 1)[-1]):
            return path
    names = ", ".join(path.stem for path in candidates) or "none"
    raise NotebookNotFound(f"no notebook called {name!r} in {notebooks}; the notebooks are: {names}")


def parse_parameters(name: str, pairs: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """Command-line ``-p NAME VALUE`` pairs for notebook `name`, typed as its parameters cell declares them.

    A parameter whose default is a string or None takes VALUE as written (``-p survey_id 1`` is the
    survey "1", not the number); the others read it as YAML (``300``, ``true``). A name the notebook does
    not declare is refused (papermill would add it unused), with the ones it does.
    """
    notebook = find_notebook(name)
    declared = papermill.inspect_notebook(str(notebook))
    parameters: dict[str, Any] = {}
    for key, value in pairs:
        if key not in declared:
            raise UnknownParameter(f"{notebook.stem} has no parameter {key!r}; "
                                   f"its parameters are: {', '.join(declared)}")
        try:
            default = ast.literal_eval(declared[key]["default"])
        except (ValueError, SyntaxError):  # an expression as default: no type to go by
            default = None
        parameters[key] = value if default is None or isinstance(default, str) else yaml.safe_load(value)
    return parameters


def run_notebook(
    name: str,
    parameters: Mapping[str, Any] | None = None,
    output_root: str | Path = "reports",
    progress: bool = False,
    config: str | Path | None = None,
) -> Path:
    """Execute a notebook with papermill; returns the run's directory (executed notebook + artifacts).

    `config`: the settings file the notebook uses (as `--config`); the kernel runs in notebooks/, so a
    relative path or ./survey-kit.yaml must be resolved by the caller (`config.settings_file`). None:
    the kernel finds its settings as its environment says (SURVEY_KIT_CONFIG, else the embedded stack).

    Raises NotebookFailed (a papermill PapermillExecutionError naming the failing cell) if the notebook
    fails; the partly executed notebook is still written for inspection.
    """
    notebook = find_notebook(name)
    run_dir = Path(output_root) / f"{notebook.stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    suffix = 1
    while run_dir.exists():
        suffix += 1
        run_dir = run_dir.with_name(f"{run_dir.name.split('.')[0]}.{suffix}")
    run_dir.mkdir(parents=True)
    try:
        papermill.execute_notebook(
            str(notebook),
            str(run_dir / notebook.name),
            parameters={**(parameters or {}), "output_dir": str(run_dir.resolve())},
            cwd=str(notebook.parent),
            progress_bar=progress,
            kernel_name="python3",
            kernel_manager_class=_kernel_manager(Path(config).resolve() if config is not None else None),
        )
    except PapermillExecutionError as exc:
        raise NotebookFailed(exc, run_dir / notebook.name) from None
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
        # the workshop applies the pipeline with the demo's window; the others read it from the deployed pipeline
        run_dirs = {}
        for name, parameters in (
            ("workshop", {"respondents": respondents, "duration_s": 120, "window_size": window_size, "grace": grace}),
            ("live_vs_windowed", {}),
            ("report", {}),
        ):
            run_dirs[name] = run_notebook(name, parameters, output_root, progress=True)
            print(f"{name}: {run_dirs[name]}", flush=True)
        print(_demo_summary(run_dirs["live_vs_windowed"] / "comparison.json", run_dirs["report"] / "report.json"))
        return run_dirs["report"] / "report.html"
    finally:
        if started:
            embedded.down()


def _demo_summary(comparison_file: Path, report_file: Path) -> str:
    """What a demo showed, from the files its notebooks wrote: the answers, and whether the streamed results
    add up (the live-vs-windowed comparison, where each difference has its reason)."""
    comparison = json.loads(comparison_file.read_text())["summary"]
    report = json.loads(report_file.read_text())
    windows = report["final_windows"]
    lines = [f"\nSurvey {report['survey_id']}: {report['entries']} answers, from the bot through Kafka and the ksql "
             f"pipeline; {windows} final window{'' if windows == 1 else 's'} closed."]
    agreement = f"{comparison['agree']} of {comparison['rows']} result rows agree with the independent recomputation"
    if comparison["differ"]:
        agreement += f"; {comparison['differ']} differ"
        agreement += (f", {comparison['unexplained']} of them unexplained (a defect: please report it)" if comparison["unexplained"] else
                      ", each for the reason it gives (a late or duplicate entry, a window not closed or an entry not "
                      "processed yet, a result of a pipeline with another window)")
        agreement += f": {comparison_file}"
    lines.append(agreement + ".")
    return "\n".join(lines)
