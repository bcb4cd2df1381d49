"""A live view of a survey for JupyterLab: answers as a bar chart with 95% intervals, as they arrive.

>>> view = LiveSurveyView(cluster, survey_id="1", window_size="48h")
>>> view.start()          # a background consumer updates the chart; the kernel stays free
>>> view                  # the chart with its controls: survey, window, stop
>>> view.stop()

``counts = await view.run_async(duration_s=60)`` follows for a while, stops, and displays the final
state as a static chart, which is what a headless run (papermill) keeps, as widgets are not drawn there.
Awaited, it leaves the kernel free for widget events meanwhile: the view's own controls and a chat with
the bot (`survey_kit.chat.ChatView`) keep working. ``view.run(...)`` does the same, blocking.

Charts render offline: JupyterChart's JavaScript comes from vl-convert, not from a CDN, because
workshops often have no internet.
"""

from __future__ import annotations

import asyncio
import html
import inspect
import os
import threading
import time

import altair as alt
import ipywidgets as widgets
import pandas as pd
from IPython import get_ipython
from IPython.display import display

from . import analysis
from .cluster import Cluster
from .frames import DurationLike, duration_ms, read_topic, tail

ALL_TIME = "all time"
_RENDER_INTERVAL_S = 0.5  # redraw at most twice a second however fast entries arrive
_RUN_TICK_S = 0.2  # how often run and run_async look at their deadline, `until` and the stop button
HEADLESS = "SURVEY_KIT_HEADLESS"  # set to 1 in the kernels of headless runs (survey_kit.reports)


def render_charts_offline() -> str:
    """Make altair draw every chart without internet; returns the renderer's name.

    Altair's default renderer loads vega from a CDN (JupyterLab's own renderer knows Vega-Lite up to 5,
    altair 6 writes 6), so offline, as at many workshops, a chart shows only "Error loading script".
    In JupyterLab: "jupyter", interactive (JupyterChart, its JavaScript from vl-convert). In a headless
    run ($SURVEY_KIT_HEADLESS=1, as `survey-kit report` runs notebooks): "svg", a static picture that
    stays in the saved notebook (a widget's would be gone with the kernel).
    """
    if os.environ.get(HEADLESS) == "1":
        alt.renderers.enable("svg")
        return "svg"
    alt.renderers.enable("jupyter", offline=True)
    return "jupyter"


def survey_chart(counts: pd.DataFrame, title: str = "") -> alt.Chart:
    """A bar chart of ``counts`` (option, count, share, ci_low, ci_high, total) with interval whiskers.

    The whiskers are the 95% Wilson interval of each option's share, drawn on the count scale.
    """
    data = counts.assign(
        low=(counts["ci_low"] * counts["total"]).fillna(0),
        high=(counts["ci_high"] * counts["total"]).fillna(0),
        percent=(counts["share"].fillna(0) * 100).round(1),
    )[["option", "count", "low", "high", "percent", "total"]]
    base = alt.Chart(data).encode(y=alt.Y("option:N", sort="-x", title=None))
    bars = base.mark_bar(color="#d2691e").encode(
        x=alt.X("count:Q", title="answers"),
        tooltip=["option", "count", alt.Tooltip("percent:Q", title="% of answers"), "low", "high"],
    )
    whiskers = base.mark_rule(color="#333").encode(x="low:Q", x2="high:Q")
    labels = base.transform_calculate(label="format(datum.percent, '.1f') + '%'").mark_text(
        align="left", dx=4, color="#333").encode(x="high:Q", text="label:N")
    return (bars + whiskers + labels).properties(title=title, width=420, height=alt.Step(28))


class LiveSurveyView:
    """The answers of one survey, all time or per tumbling window, kept current by a background consumer.

    ``window_size`` (e.g. ``"48h"``, ``"5min"``) offers the survey's tumbling windows in the window
    control; without it only "all time" is offered. ``one_per_respondent`` counts each user's latest answer.
    """

    def __init__(
        self,
        cluster: Cluster,
        survey_id: str | None = None,
        window_size: DurationLike | None = None,
        one_per_respondent: bool = False,
    ):
        self.cluster = cluster
        self.window_ms = duration_ms(window_size, "window_size") if window_size is not None else None
        self.one_per_respondent = one_per_respondent
        self._lock = threading.Lock()
        self._batches: list[pd.DataFrame] = []
        self._entries: pd.DataFrame | None = None
        self._questions = read_topic(cluster, cluster.topics.questions, progress=False)
        self._tail = None
        self._last_render = 0.0
        self._window_starts_by_label: dict[str, int] = {}
        self.failure: BaseException | None = None

        surveys = self.survey_ids()
        self.survey_control = widgets.Dropdown(
            description="survey", options=surveys, value=survey_id if survey_id in surveys else (surveys[0] if surveys else None)
        )
        self.window_control = widgets.Dropdown(description="window", options=[ALL_TIME], value=ALL_TIME)
        self.stop_control = widgets.Button(description="stop", icon="stop", disabled=True)
        self.status = widgets.HTML()
        self.survey_control.observe(lambda change: self.render(force=True), names="value")
        self.window_control.observe(lambda change: self.render(force=True), names="value")
        self.stop_control.on_click(lambda button: self.stop())
        alt.JupyterChart.enable_offline()
        self._chart = alt.JupyterChart(self.chart())
        self.widget = widgets.VBox([
            widgets.HBox([self.survey_control, self.window_control, self.stop_control]),
            self._chart,
            self.status,
        ])
        self._update_status()

    # -- data ---------------------------------------------------------------------------------
    def survey_ids(self) -> list[str]:
        """The enabled surveys, by id."""
        if self._questions.empty:
            return []
        definitions = analysis.survey_definitions(self._questions)
        if "enabled" in definitions.columns:
            definitions = definitions[definitions["enabled"].astype(bool)]
        return list(definitions["survey_id"])

    def entries(self) -> pd.DataFrame:
        """Every entry received so far (columns as :func:`survey_kit.frames.read_topic`)."""
        with self._lock:
            if self._batches:
                frames = ([self._entries] if self._entries is not None else []) + self._batches
                self._entries = pd.concat(frames, ignore_index=True)
                self._batches = []
            return self._entries if self._entries is not None else pd.DataFrame(columns=list(analysis.ENTRY_COLUMNS))

    def counts(self, survey_id: str | None = None, window: str = ALL_TIME) -> pd.DataFrame:
        """The chosen survey's answers in the chosen window: option, count, total, share, ci_low, ci_high."""
        survey_id = survey_id if survey_id is not None else self.survey_control.value
        entries = self.entries()
        entries = entries[entries["survey_id"] == survey_id] if len(entries) else entries
        if window != ALL_TIME and len(entries):
            entries = entries[_window_starts(entries, self.window_ms) == self._window_starts_by_label[window]]
        questions = self._questions if not self._questions.empty else None
        if len(entries) == 0:
            histogram = pd.DataFrame({"survey_id": [], "option": [], "count": []})
            if questions is not None:
                definitions = analysis.survey_definitions(questions)
                options = definitions.loc[definitions["survey_id"] == survey_id, "options"]
                if len(options):
                    histogram = pd.DataFrame({"survey_id": survey_id, "option": list(options.iloc[0]), "count": 0})
        else:
            histogram = analysis.live_histogram(entries, questions, one_per_respondent=self.one_per_respondent)
        histogram = histogram[histogram["survey_id"] == survey_id] if len(histogram) else histogram
        histogram = histogram.astype({"count": "int64"})
        return analysis.shares(histogram)[["option", "count", "total", "share", "ci_low", "ci_high"]]

    def chart(self) -> alt.Chart:
        """The current chart as a static altair chart (what the live view shows now)."""
        survey_id = self.survey_control.value if hasattr(self, "survey_control") else None
        window = self.window_control.value if hasattr(self, "window_control") else ALL_TIME
        counts = self.counts(survey_id, window)
        question = self._question(survey_id)
        total = int(counts["count"].sum())
        return survey_chart(counts, title=f"{question} ({total} answers, {window})")

    # -- life cycle ---------------------------------------------------------------------------
    def start(self) -> LiveSurveyView:
        """Start following survey-entries (from its beginning) in a background thread."""
        if self._tail is not None:
            return self
        self._tail = tail(self.cluster, self.cluster.topics.entries, from_beginning=True, poll_timeout=0.2)
        self._tail.start(on_rows=self._on_rows, on_error=self._on_error, on_idle=self._update_status)
        self.stop_control.disabled = False
        self._update_status()
        return self

    def stop(self) -> None:
        """Stop the background consumer and draw the final state."""
        if self._tail is not None:
            self._tail.stop()
            self._tail = None
        self.stop_control.disabled = True
        self.render(force=True)

    def run(self, duration_s: float, until=None) -> pd.DataFrame:
        """Follow entries for ``duration_s`` seconds (or until ``until(view)`` is true, or the stop button),
        stop, and display the final chart as a static image; returns the final counts.

        It blocks: in a notebook, widget events wait until it returns. Prefer ``await view.run_async(...)``
        there; this is for scripts."""
        self.start()
        deadline = time.monotonic() + duration_s
        try:
            while self._goes_on(deadline, until):
                time.sleep(_RUN_TICK_S)
        finally:
            self.stop()
        return self._final_counts()

    async def run_async(self, duration_s: float, until=None) -> pd.DataFrame:
        """`run`, awaited: ``counts = await view.run_async(duration_s=60)`` in a notebook cell.

        While the cell awaits, the kernel handles widget events (ipykernel 7.4 and later dispatch them
        during an awaiting cell), so the survey and window controls, the stop button and a ChatView in
        the same notebook keep working; with `run` they would wait until it is done."""
        _let_widgets_answer_while_awaiting()
        self.start()
        deadline = time.monotonic() + duration_s
        try:
            while self._goes_on(deadline, until):
                await asyncio.sleep(_RUN_TICK_S)
        finally:
            self.stop()
        return self._final_counts()

    def _goes_on(self, deadline: float, until) -> bool:
        """Whether a run follows on: before its deadline, not failed, not stopped (by the stop button), and
        ``until(view)`` not yet true."""
        if time.monotonic() >= deadline or self.failure is not None or self._tail is None:
            return False
        return until is None or not until(self)

    def _final_counts(self) -> pd.DataFrame:
        if self.failure is not None:
            raise RuntimeError(f"the live view stopped: {self.failure}") from self.failure
        display(self.chart())
        return self.counts(self.survey_control.value, self.window_control.value)

    @property
    def running(self) -> bool:
        return self._tail is not None and self._tail.running

    # -- rendering ----------------------------------------------------------------------------
    def render(self, force: bool = False) -> None:
        """Redraw the chart (at most twice a second unless ``force``)."""
        now = time.monotonic()
        if not force and now - self._last_render < _RENDER_INTERVAL_S:
            return
        self._last_render = now
        self._refresh_controls()
        self._chart.chart = self.chart()
        self._update_status()

    def _on_rows(self, batch: pd.DataFrame) -> None:
        with self._lock:
            self._batches.append(batch)
        unknown = set(batch["survey_id"].dropna()) - set(self.survey_control.options)
        if unknown:  # a survey created after the view started
            self._questions = read_topic(self.cluster, self.cluster.topics.questions, progress=False)
        self.render()

    def _on_error(self, exc: BaseException) -> None:
        self.failure = exc
        self.status.value = f"<b>stopped</b>: {exc}"

    def _refresh_controls(self) -> None:
        surveys = self.survey_ids()
        if list(self.survey_control.options) != surveys:
            current = self.survey_control.value
            self.survey_control.options = surveys
            self.survey_control.value = current if current in surveys else (surveys[0] if surveys else None)
        if self.window_ms is not None:
            entries = self.entries()
            entries = entries[entries["survey_id"] == self.survey_control.value] if len(entries) else entries
            starts = sorted(set(_window_starts(entries, self.window_ms))) if len(entries) else []
            self._window_starts_by_label = {_window_label(start, self.window_ms): start for start in starts}
            labels = [ALL_TIME, *self._window_starts_by_label]
            if list(self.window_control.options) != labels:
                current = self.window_control.value
                self.window_control.options = labels
                self.window_control.value = current if current in labels else ALL_TIME

    def _update_status(self) -> None:
        entries = self.entries()
        tail = self._tail
        state = "following survey-entries" if tail is not None else "stopped"
        last = entries["timestamp"].max() if len(entries) else None
        waiting = tail.waiting if tail is not None else None  # why nothing may be arriving
        self.status.value = (f"{state}: {len(entries)} entries received"
                             + (f", the latest at {last:%Y-%m-%d %H:%M:%S} UTC" if last is not None else "")
                             + (f"; {html.escape(waiting)}" if waiting else ""))

    def _question(self, survey_id: str | None) -> str:
        if survey_id is None or self._questions.empty:
            return "no survey yet"
        definitions = analysis.survey_definitions(self._questions)
        match = definitions.loc[definitions["survey_id"] == survey_id, "question"]
        return match.iloc[0] if len(match) else f"survey {survey_id}"

    def _ipython_display_(self) -> None:
        display(self.widget)


def _let_widgets_answer_while_awaiting() -> None:
    """Make every widget take more than one event while a cell awaits (ipykernel 7.4's concurrent comms).

    ipykernel 7.4 handles a comm message that arrives while a cell awaits, but publishes no busy/idle
    status for it; ipywidgets' frontend sends a widget's next change only once the kernel said idle for
    its previous one, so each widget (the chat's text box) took one event per awaiting cell and then
    none (seen in JupyterLab). This publishes that idle, then busy again for the cell that still runs.
    """
    kernel = getattr(get_ipython(), "kernel", None)
    dispatch = getattr(kernel, "dispatch_shell", None)
    if dispatch is None or getattr(dispatch, "publishes_idle_for_comms", False):
        return  # not in a kernel, or done already
    if "concurrent" not in inspect.signature(dispatch).parameters:
        return  # an ipykernel that holds comm messages back until the cell ends: nothing to add

    async def dispatch_shell(msg, /, subshell_id=None, *, concurrent=False):
        cell = kernel.get_parent("shell")
        await dispatch(msg, subshell_id=subshell_id, concurrent=concurrent)
        if concurrent:
            kernel._publish_status("idle", "shell")  # its parent is still the comm message
            kernel._publish_status("busy", "shell", parent=cell)

    dispatch_shell.publishes_idle_for_comms = True
    kernel.dispatch_shell = dispatch_shell


def _window_starts(entries: pd.DataFrame, window_ms: int) -> pd.Series:
    timestamps = entries["timestamp_ms"].astype("int64")
    return timestamps - timestamps % window_ms


def _window_label(start_ms: int, window_ms: int) -> str:
    start = pd.Timestamp(start_ms, unit="ms", tz="UTC")
    end = pd.Timestamp(start_ms + window_ms, unit="ms", tz="UTC")
    return f"{start:%Y-%m-%d %H:%M:%S} - {end:%Y-%m-%d %H:%M:%S} UTC"


__all__ = ["LiveSurveyView", "survey_chart", "ALL_TIME"]
