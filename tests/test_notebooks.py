"""Every notebook runs headless with papermill against an embedded stack, and produces what it promises.

One stack for the module, started as `survey-kit up` starts it (free ports, a private SURVEY_KIT_HOME),
so the notebooks find it the way a user's notebooks do. The workshop runs first and fills the topics.
"""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from survey_kit import stack as embedded
from survey_kit.bot.generator import plan_entries, write_entries
from survey_kit.cluster import connect
from survey_kit.frames import read_topic
from survey_kit.reports import _demo_summary, run_demo, run_notebook
from survey_kit.stack.processes import free_port
from survey_kit.stack.services import SERVICES
from survey_kit.surveys import Survey, create_survey

WINDOWS = {"window_size": "10 SECONDS", "grace": "2 SECONDS"}

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def running_stack(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    saved = os.environ.get("SURVEY_KIT_HOME")
    os.environ["SURVEY_KIT_HOME"] = str(home)  # inherited by the notebooks' kernels
    try:
        stack, started = embedded.up({name: free_port() for name in SERVICES})
        assert started
        yield stack
    finally:
        embedded.down()
        if saved is None:
            os.environ.pop("SURVEY_KIT_HOME", None)
        else:
            os.environ["SURVEY_KIT_HOME"] = saved


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    return tmp_path_factory.mktemp("reports")


@pytest.fixture(scope="module")
def workshop(running_stack, reports):
    run_dir = run_notebook("workshop", {"respondents": 40, "duration_s": 90, **WINDOWS}, reports)
    return run_dir


def comparison_of(run_dir):
    return json.loads((run_dir / "comparison.json").read_text())


def test_workshop_sends_entries_through_the_pipeline(workshop):
    cluster = connect()
    entries = read_topic(cluster, cluster.topics.entries, progress=False)
    assert 0 < len(entries) <= 40  # simulated respondents, minus those who cancelled
    assert set(entries["survey_id"]) == {"1"}
    assert len(read_topic(cluster, cluster.topics.respondents, progress=False)) == len(entries)
    final = read_topic(cluster, cluster.topics.results_final, windowed=True, progress=False)
    assert len(final) >= 1  # the windows closed by wall-clock time and were emitted
    assert (workshop / "01_workshop.ipynb").is_file()


def test_workshop_shows_the_bot_ready_with_the_survey_open(workshop):
    # the status right after the start is the attendee's sign that /survey will be answered
    shown = _displayed(workshop / "01_workshop.ipynb")
    assert "'ready': True" in shown and "'surveys_open': ['1']" in shown


def test_workshop_offers_a_chat_to_take_the_survey_yourself(workshop):
    import nbformat

    notebook = nbformat.read(workshop / "01_workshop.ipynb", as_version=4)
    (cell,) = [c for c in notebook.cells if c.cell_type == "code" and "ChatView(" in c.source]
    (shown,) = [o for o in cell.outputs if o.get("output_type") == "display_data"]
    assert "application/vnd.jupyter.widget-view+json" in shown["data"]  # the widget, drawn by JupyterLab


def test_workshop_live_chart_ends_with_every_confirmed_answer(workshop):
    """The live part ends once the simulated respondents are done and their answers are on the chart."""
    import ast

    import nbformat

    notebook = nbformat.read(workshop / "01_workshop.ipynb", as_version=4)
    (cell,) = [c for c in notebook.cells if c.cell_type == "code" and "await view.run_async" in c.source]
    (printed,) = [o["text"] for o in cell.outputs if o.get("output_type") == "stream"]
    simulation = ast.literal_eval(printed.strip())
    (chart,) = [o["data"]["image/svg+xml"] for o in cell.outputs if "image/svg+xml" in o.get("data", {})]
    assert simulation["confirmed"] > 0
    assert f"Which Thanksgiving Pie is your favorite? ({simulation['confirmed']} answers, all time)" in chart


def test_clean_run_streamed_and_recomputed_agree_exactly(workshop, reports):
    run_dir = run_notebook("live_vs_windowed", {"survey_id": "1", **WINDOWS}, reports)
    document = comparison_of(run_dir)
    summary = document["summary"]
    assert summary["differ"] == 0 and summary["unexplained"] == 0
    cluster = connect()
    entries = len(read_topic(cluster, cluster.topics.entries, progress=False))
    assert summary["streamed_total"] == summary["recomputed_total"] == entries
    finals = [row for row in document["rows"] if row["result"] == "final"]
    assert finals and all(row["streamed"] == row["recomputed"] for row in finals)
    assert sum(row["streamed"] for row in finals) == entries


def test_late_and_out_of_order_entries_are_all_explained(workshop, reports):
    cluster = connect()
    survey = Survey("2", "Cake or pie?", "Dessert", ["Cake", "Pie"])
    create_survey(cluster, survey)
    # An hour ahead of the workshop's entries: stream time jumps there, and some entries come 30 s late.
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=1)
    planned = plan_entries(survey, 60, start=start, interval=timedelta(seconds=1), late=8,
                           late_by=timedelta(seconds=30), shuffle=3, seed=11)
    write_entries(cluster, planned)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # the live histogram counts every entry once processed
        live = read_topic(cluster, cluster.topics.results_live, progress=False)
        latest = live[live["key"] == "2"].tail(1)
        if len(latest) and sum(latest["RESULTS"].iloc[0].values()) == 60:
            break
        time.sleep(1)
    run_dir = run_notebook("live_vs_windowed", {"survey_id": "2", **WINDOWS}, reports)
    document = comparison_of(run_dir)
    reasons = " | ".join(row["reason"] for row in document["rows"])
    assert document["summary"]["unexplained"] == 0, reasons
    assert document["summary"]["differ"] > 0
    assert "late record dropped" in reasons
    assert "window not closed yet" in reasons  # the last window waits for stream time to move on
    live_rows = [row for row in document["rows"] if row["result"] == "live"]
    assert sum(row["streamed"] for row in live_rows) == 60


def test_explore_notebook_runs_and_its_charts_stay_in_the_saved_notebook_as_pictures(workshop, reports):
    run_dir = run_notebook("explore", {"survey_id": "1"}, reports)
    charts = _chart_outputs(run_dir / "02_explore.ipynb")
    # answers, by company, over time (the interactive filter's chart lives in its widget's output)
    assert len(charts) == 3 and all(set(data) == {"image/svg+xml", "text/plain"} for data in charts)
    assert all("<svg" in data["image/svg+xml"] for data in charts)


def test_every_chart_a_headless_run_saves_draws_without_internet(workshop, reports):
    # altair's default would write HTML that loads vega from cdn.jsdelivr.net: "Error loading script" offline
    for run_dir in sorted(reports.iterdir()):
        for notebook in run_dir.glob("*.ipynb"):
            outputs = json.dumps([o for cell in json.loads(notebook.read_text())["cells"] for o in cell.get("outputs", [])])
            assert "cdn.jsdelivr" not in outputs and "<script src=" not in outputs, notebook


def test_charts_in_jupyterlab_are_interactive_and_offline(monkeypatch):
    import altair as alt
    import pandas as pd

    from survey_kit.widgets import HEADLESS, render_charts_offline, survey_chart

    monkeypatch.delenv(HEADLESS, raising=False)
    saved = alt.renderers.active
    try:
        assert render_charts_offline() == "jupyter"
        counts = {"option": ["Apple"], "count": [1], "total": [1], "share": [1.0], "ci_low": [0.2], "ci_high": [1.0]}
        data, _ = survey_chart(pd.DataFrame(counts), "t")._repr_mimebundle_()
        assert "application/vnd.jupyter.widget-view+json" in data  # a JupyterChart widget
        assert alt.JupyterChart._is_offline  # its JavaScript is vl-convert's, not a CDN's
    finally:
        alt.renderers.enable(saved)


def test_report_notebook_writes_html_with_static_charts(workshop, reports):
    # a number, as `papermill -p survey_id 1` passes it: the notebook takes it as the id "1"
    run_dir = run_notebook("report", {"survey_id": 1, **WINDOWS}, reports)
    page = (run_dir / "report.html").read_text()
    summary = json.loads((run_dir / "report.json").read_text())
    assert "Which Thanksgiving Pie is your favorite?" in page
    assert summary["final_windows"] >= 1 and summary["comparison"].keys() == {"agree"}
    for name in summary["charts"].values():
        assert (run_dir / name).read_text().startswith("<svg")
        assert f"src='{name}'" in page


def test_notebook_fails_early_with_a_clear_message(workshop, reports):
    import papermill

    with pytest.raises(papermill.PapermillExecutionError, match="survey '9' is not defined"):
        run_notebook("live_vs_windowed", {"survey_id": "9", **WINDOWS}, reports)
    with pytest.raises(papermill.PapermillExecutionError, match="survey '9' is not defined on .*Create it"):
        run_notebook("report", {"survey_id": "9", **WINDOWS}, reports)
    # the analysts' notebook, given a survey without entries, says so instead of drawing empty charts
    with pytest.raises(papermill.PapermillExecutionError, match=r"survey '9' has no entries on survey-entries; "
                                                                r"the surveys with entries are \['1'"):
        run_notebook("explore", {"survey_id": 9}, reports)  # a number, as papermill -p passes it


def test_a_scheduled_report_from_the_command_line(workshop, reports, capsys):
    from survey_kit.cli import main

    # as the notebook's own usage line runs it: survey_id 1 is the survey "1", not the number
    # no window given: the report takes the deployed pipeline's (the workshop applied 10-second windows)
    code = main(["report", "--notebook", "report", "-p", "survey_id", "1", "--output", str(reports)])
    out, err = capsys.readouterr()
    assert code == 0, err
    run_dir = out.rsplit("executed notebook and its files: ", 1)[1].strip()
    page = open(os.path.join(run_dir, "report.html")).read()
    assert "Which Thanksgiving Pie" in page and "Windows of 10 SECONDS with a grace period of 2 SECONDS" in page

    # a window that did not make the results is refused, not used to recompute them
    assert main(["report", "--notebook", "report", "-p", "survey_id", "1", "-p", "window_size", "48 HOURS",
                 "--output", str(reports)]) == 1
    assert "window_size '48 HOURS' is not the deployed pipeline's (10 SECONDS" in capsys.readouterr().err

    assert main(["report", "--notebook", "report", "-p", "surveyid", "1"]) == 1  # refused before it runs
    assert "04_report has no parameter 'surveyid'; its parameters are: survey_id, " in capsys.readouterr().err


def test_a_scheduled_report_uses_the_settings_file_of_the_command(running_stack, workshop, reports, tmp_path, capsys, monkeypatch):
    # the kernel runs in notebooks/: the report must still use ./survey-kit.yaml or --config of the command,
    # or a report meant for Confluent Cloud silently reads the embedded stack (or nothing)
    from survey_kit.cli import main

    dead = free_port()
    (tmp_path / "survey-kit.yaml").write_text(
        f"kafka:\n  bootstrap.servers: 127.0.0.1:{dead}\nschema_registry:\n  url: {running_stack.schema_registry_url}\n")
    monkeypatch.chdir(tmp_path)
    assert main(["report", "--notebook", "report", "-p", "survey_id", "1", "--output", str(reports)]) == 1
    assert f"cannot reach Kafka at 127.0.0.1:{dead}" in capsys.readouterr().err

    real = tmp_path / "elsewhere.yaml"  # the stack's addresses, configured as real infrastructure is
    real.write_text(f"kafka:\n  bootstrap.servers: {running_stack.bootstrap_servers}\n"
                    f"schema_registry:\n  url: {running_stack.schema_registry_url}\n"
                    f"ksqldb:\n  url: {running_stack.addresses['ksqldb_url']}\n")
    code = main(["--config", "elsewhere.yaml", "report", "--notebook", "report", "-p", "survey_id", "1",
                 "--output", str(reports)])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "Which Thanksgiving Pie" in (Path(out.rsplit("executed notebook and its files: ", 1)[1].strip()) / "report.html").read_text()


def test_a_failing_scheduled_report_says_which_cell_and_where_the_notebook_is(workshop, reports, capsys):
    from survey_kit.cli import main

    code = main(["report", "--notebook", "report", "-p", "survey_id", "9", "-p", "window_size", "10 SECONDS",
                 "--output", str(reports)])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert "04_report.ipynb failed in cell [" in err and "survey '9' is not defined" in err
    executed = err.rsplit("the partly executed notebook, with the traceback: ", 1)[1].strip()
    assert executed.endswith("04_report.ipynb") and os.path.exists(executed)


def test_workshop_on_a_pipeline_with_long_windows_ends_and_says_when_they_close(workshop, reports):
    # a user applied the talk's 48-hour windows before (IF NOT EXISTS keeps them): the workshop must not
    # wait two days for the final results; it waits final_wait_s and says when the window closes
    from survey_kit.ksql.apply import ksql_client

    cluster = connect()
    with ksql_client(cluster) as ksql:
        ksql.execute("DROP TABLE survey_results_final;")
    started = time.monotonic()
    run_dir = run_notebook("workshop", {"respondents": 5, "duration_s": 60, "window_size": "48 HOURS",
                                        "grace": "10 MINUTES", "final_wait_s": 4}, reports)
    assert time.monotonic() - started < 120
    printed = _printed(run_dir / "01_workshop.ipynb")
    assert " window(s) not closed within final_wait_s=4: the last closes at " in printed
    assert "UTC (window end + grace); its final result appears on survey-results-final then" in printed
    closes = datetime.strptime(printed.split("the last closes at ", 1)[1][:19], "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)
    window_ms = 48 * 3600 * 1000  # windows are epoch-aligned: the last one holds the latest entry
    last_start = int(read_topic(cluster, cluster.topics.entries, progress=False)["timestamp_ms"].max()) // window_ms * window_ms
    assert closes == datetime.fromtimestamp(last_start / 1000, UTC) + timedelta(hours=48, minutes=10)


def test_workshop_on_a_pipeline_closing_by_stream_time_says_so(workshop, reports):
    # the final results were applied before without wall-clock closing (`survey-kit ksql apply` does so):
    # IF NOT EXISTS keeps that, and the workshop says what closes the window instead of waiting for it
    from survey_kit.ksql.apply import apply_pipeline, closes_by_wall_clock, ksql_client

    cluster = connect()
    with ksql_client(cluster) as ksql:
        ksql.execute("DROP TABLE survey_results_final;")
        apply_pipeline(ksql, overrides={"results_window_size": "48 HOURS", "results_window_grace": "10 MINUTES"})
    assert closes_by_wall_clock(cluster) is False
    run_dir = run_notebook("workshop", {"respondents": 5, "duration_s": 60, "window_size": "48 HOURS",
                                        "grace": "10 MINUTES", "final_wait_s": 120}, reports)
    printed = " ".join(_printed(run_dir / "01_workshop.ipynb").split())
    assert ("Its query runs with survey_kit.emit.final.wall.clock = false (this request: true), which stays in "
            "force: DROP TABLE SURVEY_RESULTS_FINAL; first to change it.") in printed
    assert " window(s) not closed yet: the last closes when an entry at or after " in printed
    assert "UTC arrives (the pipeline closes windows by stream time only)" in printed


def _printed(notebook_path) -> str:
    import nbformat

    notebook = nbformat.read(notebook_path, as_version=4)
    return "".join(output.get("text", "") for cell in notebook.cells if cell.cell_type == "code"
                   for output in cell.get("outputs", []) if output.get("output_type") == "stream")


def _chart_outputs(notebook_path) -> list[dict]:
    """The data of each output that is a chart (an SVG picture or an HTML/vega one), in order."""
    import nbformat

    notebook = nbformat.read(notebook_path, as_version=4)
    return [output["data"] for cell in notebook.cells if cell.cell_type == "code" for output in cell.get("outputs", [])
            if output.get("output_type") in ("display_data", "execute_result")
            and ({"image/svg+xml", "image/png"} & set(output["data"]) or "vega" in output["data"].get("text/html", ""))]


def _displayed(notebook_path) -> str:
    import nbformat

    notebook = nbformat.read(notebook_path, as_version=4)
    return "".join(output.get("data", {}).get("text/plain", "") for cell in notebook.cells if cell.cell_type == "code"
                   for output in cell.get("outputs", []) if output.get("output_type") == "execute_result")


def test_notebooks_are_committed_without_outputs():
    import nbformat

    from survey_kit.reports import NOTEBOOKS

    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        notebook = nbformat.read(path, as_version=4)
        assert any("parameters" in cell.metadata.get("tags", []) for cell in notebook.cells), path.name
        for cell in notebook.cells:
            assert not cell.get("outputs") and not cell.get("execution_count"), path.name


def test_a_finished_run_shuts_its_kernel_down_without_interrupting_it(tmp_path):
    """A SIGINT at shutdown made ipykernel log "ERROR | KeyboardInterrupt caught in kernel." into `make demo`."""
    import nbformat
    import papermill

    from survey_kit.reports import _kernel_manager

    mark = tmp_path / "interrupted"
    # the kernel restores this handler after each cell (ipykernel's post_handler_hook), so it is the one
    # in place while the kernel is idle, when papermill shuts it down
    cell = ("from pathlib import Path\n"
            f"get_ipython().kernel.saved_sigint_handler = lambda *_: Path({str(mark)!r}).write_text('SIGINT')\n")
    notebook = tmp_path / "tiny.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(cell)]), notebook)
    papermill.execute_notebook(str(notebook), str(tmp_path / "out.ipynb"), kernel_name="python3",
                               progress_bar=False, kernel_manager_class=_kernel_manager(None))
    assert not mark.exists()


def test_the_demo_runs_the_whole_data_path_and_says_what_it_showed(running_stack, tmp_path, capsys):
    """`make demo`: workshop, comparison and report on the running stack; it ends by saying what came out."""
    report = run_demo(respondents=30, output_root=tmp_path)
    assert report.name == "report.html" and report.exists()
    printed = capsys.readouterr().out
    assert "stack already running" in printed  # it used the stack it found, and left it running
    comparison = json.loads(next(tmp_path.glob("03_live_vs_windowed-*/comparison.json")).read_text())["summary"]
    written = json.loads((report.parent / "report.json").read_text())
    assert comparison["unexplained"] == 0
    assert (f"Survey 1: {written['entries']} answers, from the bot through Kafka and the ksql pipeline; "
            f"{written['final_windows']} final window") in printed
    assert f"{comparison['agree']} of {comparison['rows']} result rows agree with the independent recomputation" in printed
    assert embedded.running_stack() is not None  # still up


def test_the_demo_says_when_results_do_not_add_up(tmp_path):
    (tmp_path / "comparison.json").write_text(json.dumps({"summary": {"rows": 12, "agree": 9, "differ": 3, "unexplained": 1}}))
    (tmp_path / "report.json").write_text(json.dumps({"survey_id": "1", "entries": 40, "final_windows": 2}))
    summary = _demo_summary(tmp_path / "comparison.json", tmp_path / "report.json")
    assert "Survey 1: 40 answers, from the bot through Kafka and the ksql pipeline; 2 final windows closed." in summary
    assert (f"9 of 12 result rows agree with the independent recomputation; 3 differ, 1 of them unexplained "
            f"(a defect: please report it): {tmp_path / 'comparison.json'}.") in summary
    (tmp_path / "comparison.json").write_text(json.dumps({"summary": {"rows": 12, "agree": 9, "differ": 3, "unexplained": 0}}))
    explained = _demo_summary(tmp_path / "comparison.json", tmp_path / "report.json")
    assert "9 of 12 result rows agree with the independent recomputation; 3 differ, each for the reason it gives" in explained


def test_workshop_live_part_stopped_early_ends_at_once_and_says_the_respondents_still_answer(workshop, reports):
    """The live part ends at duration_s (or the stop button) even while simulated respondents still answer."""
    started = time.monotonic()
    run_dir = run_notebook("workshop", {"respondents": 300, "duration_s": 3, **WINDOWS, "final_wait_s": 1}, reports)
    printed = _printed(run_dir / "01_workshop.ipynb")
    assert "The simulated respondents are still answering; `simulation` holds their figures once they are done." in printed
    assert "no simulation" not in printed
    assert time.monotonic() - started < 120, "the run waited for the respondents"
