"""The engine against ksqlDB's own query-validation tests (../shared/qtt, skipped when absent)."""

from pathlib import Path

import pytest

from survey_kit.ksql.qtt import run_files

QTT = Path(__file__).resolve().parents[1].parent / "shared" / "qtt"

pytestmark = pytest.mark.skipif(not QTT.is_dir(), reason=f"no QTT files at {QTT}")

# Features outside the engine's subset; a case may be unsupported only for one of these.
EXCLUDED = ("SESSION windows", "HOPPING windows", "Stream-stream joins", "PROTOBUF", "TOPK")


@pytest.fixture(scope="module")
def report():
    return run_files(sorted(QTT.glob("*.json")))


@pytest.mark.parametrize("name", ["histogram.json", "count.json", "tumbling-windows.json", "suppress.json", "stream-table-join.json"])
def test_every_supported_case_of_the_pipeline_files_passes(report, name):
    cases = report.for_file(name)
    assert cases.cases, f"no cases ran from {name}"
    failures = [f"{c.name}: {c.detail}" for c in cases.cases if c.status == "failed"]
    assert not failures, "\n".join(failures)
    for case in cases.cases:
        if case.status == "unsupported":
            assert any(feature in case.detail for feature in EXCLUDED), f"{case.name} unsupported for another reason: {case.detail}"
    assert cases.passed > 0


def test_at_least_half_of_group_by_passes_and_none_fails(report):
    cases = report.for_file("group-by.json")
    assert cases.passed >= len(cases.cases) / 2, cases.to_text()
    # the others are unsupported (each says why): a statement ksqlDB rejects is rejected with its message
    assert [c.name for c in cases.cases if c.status == "failed"] == [], cases.to_text()


def test_unsupported_is_never_counted_as_passed(report):
    summary = report.to_json()
    assert summary["passed"] + summary["failed"] + summary["unsupported"] == len(summary["cases"])
    assert all(c["status"] != "passed" or c["detail"] == "" for c in summary["cases"])


def test_a_single_case_can_be_selected():
    only = run_files([QTT / "count.json"], case="count table")
    assert [c.name for c in only.cases] == ["count table"]
    assert only.passed == 1
