"""`survey-kit ksql test` / `check` as the CLI mounts them (survey_kit.ksql.cli.main)."""

import json
from pathlib import Path

import pytest

from survey_kit.ksql.cli import main

ROOT = Path(__file__).resolve().parents[1]
QTT = ROOT.parent / "shared" / "qtt"


def write_qtt(tmp_path, expected_count):
    case = {
        "name": "count per key",
        "statements": [
            "CREATE STREAM S (ID STRING KEY, V STRING) WITH (kafka_topic='s', value_format='JSON');",
            "CREATE TABLE T AS SELECT ID, COUNT(*) AS N FROM S GROUP BY ID;",
        ],
        "inputs": [{"topic": "s", "key": "a", "value": {"V": "x"}, "timestamp": 3}],
        "outputs": [{"topic": "T", "key": "a", "value": {"N": expected_count}, "timestamp": 3}],
    }
    path = tmp_path / "mini.json"
    path.write_text(json.dumps({"tests": [case]}))
    return path


def test_a_passing_file_exits_zero_and_prints_json(tmp_path, capsys):
    assert main(["test", str(write_qtt(tmp_path, 1)), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["passed"], report["failed"], report["unsupported"]) == (1, 0, 0)
    assert report["cases"][0]["name"] == "count per key"


def test_a_failing_case_exits_one_and_shows_the_first_differing_record(tmp_path, capsys):
    assert main(["test", str(write_qtt(tmp_path, 2))]) == 1
    out = capsys.readouterr().out
    assert "FAILED" in out and '"value": {"N": 2}' in out and '"value": {"N": 1}' in out


def test_unknown_files_and_cases_are_usage_errors(tmp_path, capsys):
    assert main(["test", str(tmp_path / "missing.json")]) == 2
    assert main(["test", str(write_qtt(tmp_path, 1)), "--case", "nope"]) == 2
    assert "no case named 'nope'" in capsys.readouterr().err


@pytest.mark.skipif(not QTT.is_dir(), reason="no QTT files")
def test_unsupported_cases_do_not_fail_the_run(capsys):
    assert main(["test", str(QTT / "histogram.json")]) == 0
    assert "4 passed, 0 failed, 4 unsupported" in capsys.readouterr().out


def test_check_plans_the_pipeline_files(capsys):
    assert main(["check", str(ROOT / "ksql"), "--define", "results_window_size=5 MINUTES"]) == 0
    out = capsys.readouterr().out
    assert "CTAS_SURVEY_RESULTS_FINAL" in out and "TUMBLING window 300000 ms" in out


def test_output_cut_short_by_its_reader_ends_quietly(tmp_path):
    # `survey-kit ksql test FILE | head -1`: the reader goes away while the output is written
    import os
    import subprocess
    import sys

    cases = json.loads(write_qtt(tmp_path, 1).read_text())["tests"]
    many = tmp_path / "many.json"
    many.write_text(json.dumps({"tests": [{**cases[0], "name": f"count per key {i}"} for i in range(400)]}))
    env = {**os.environ, "SURVEY_KIT_HOME": str(tmp_path)}
    # output long enough to be written while the command runs, and a line written only at its end
    for command in (["ksql", "test", str(many)], ["status"]):
        read_end, write_end = os.pipe()
        os.close(read_end)  # every write to the command's stdout now fails with EPIPE
        try:
            result = subprocess.run([sys.executable, "-m", "survey_kit.cli", *command], env=env,
                                    stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=120)
        finally:
            os.close(write_end)
        assert result.returncode == 141, command  # 128 + SIGPIPE, as a Unix tool whose reader has gone
        assert result.stderr == "", command  # no "error: [Errno 32] Broken pipe", no traceback
