"""survey_kit.analysis on hand-built frames (shaped like survey_kit.frames.read_topic's) with outcomes
worked out by hand."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from survey_kit.analysis import (
    breakdown,
    compare,
    live_histogram,
    mark_records,
    one_answer_per_respondent,
    shares,
    streamed_histogram,
    survey_definitions,
    wilson_interval,
    window_status,
    windowed_histogram,
)

B = 1_764_000_000_000  # a multiple of 10 minutes: 2025-11-24T16:00:00Z
MIN = 60_000


def entries_frame(rows) -> pd.DataFrame:
    """rows: dicts with ts (ms), response and optionally partition, survey_id, user_id, entry_id, company,
    location. Offsets count up per partition in the order given."""
    next_offset: dict[int, int] = {}
    records = []
    for i, row in enumerate(rows):
        partition = row.get("partition", 0)
        offset = next_offset.get(partition, 0)
        next_offset[partition] = offset + 1
        survey_id = row.get("survey_id", "1")
        entry_id = row.get("entry_id", f"e{i}")
        records.append({
            "key": survey_id, "survey_id": survey_id, "user_id": row.get("user_id", f"u{i}"), "name": "N",
            "company": row.get("company"), "location": row.get("location"), "response": row["response"],
            "timestamp": pd.Timestamp(row["ts"], unit="ms", tz="UTC"), "timestamp_ms": row["ts"],
            "partition": partition, "offset": offset, "entry_id": entry_id,
            "headers": {"entry_id": entry_id} if entry_id else None, "tombstone": False,
        })
    return pd.DataFrame(records)


def questions_frame(*surveys) -> pd.DataFrame:
    return pd.DataFrame([
        {"key": sid, "survey_id": sid, "question": question, "summary": question, "options": options,
         "enabled": True, "partition": 0, "offset": i, "tombstone": False}
        for i, (sid, question, options) in enumerate(surveys)
    ])


PIE = ("1", "Pie?", ["Apple", "Pecan", "Other"])


def results_frame(rows, windowed: bool = False, size_ms: int = 10 * MIN) -> pd.DataFrame:
    """rows: (key, histogram or None, window_start_ms if windowed), in offset order on partition 0."""
    records = []
    for offset, row in enumerate(rows):
        record = {"key": row[0]}
        if windowed:
            record["window_start"] = pd.Timestamp(row[2], unit="ms", tz="UTC")
            record["window_end"] = pd.Timestamp(row[2] + size_ms, unit="ms", tz="UTC")
        record.update({"RESULTS": row[1], "partition": 0, "offset": offset, "tombstone": row[1] is None})
        records.append(record)
    return pd.DataFrame(records)


def test_late_records_follow_the_qtt_out_of_order_case_to_the_millisecond():
    # shared/qtt/tumbling-windows.json "out of order - explicit grace period": SIZE 30 s, GRACE 1 min.
    inputs = [("0", 0), ("0", 89_999), ("0", 10_009), ("0", 90_000), ("0", 10_010), ("1", 10_009),
              ("1", 30_000), ("1", 86_412_022), ("1", 60_000)]
    entries = entries_frame([{"survey_id": key, "ts": ts, "response": "x"} for key, ts in inputs])

    marked = mark_records(entries, size="30s", grace="1min")

    assert list(marked["status"]) == ["kept", "kept", "kept", "kept", "dropped-late", "dropped-late",
                                      "kept", "kept", "dropped-late"]
    # 10 009 at stream time 89 999 is kept: its window [0, 30 s) closes at 90 000, which is not <= 89 999.
    assert marked.loc[2, "closes_at_ms"] == 90_000 and marked.loc[2, "stream_time_ms"] == 89_999
    # 10 010 at stream time 90 000 is dropped: 90 000 <= 90 000. Stream time is the partition's, not the key's.
    assert marked.loc[5, "stream_time_ms"] == 90_000
    assert marked.loc[4, "reason"].startswith("late record dropped: window [1970-01-01 00:00:00.000 UTC, "
                                              "1970-01-01 00:00:30.000 UTC) closed at end + grace")
    assert marked.loc[4, "reason"].endswith("partition 0 had reached stream time 1970-01-01 00:01:30.000 UTC "
                                            "(0 s past it)")
    assert list(marked["window_start_ms"]) == [0, 60_000, 0, 90_000, 0, 0, 30_000, 86_400_000, 60_000]


def test_stream_time_is_kept_per_partition():
    entries = entries_frame([
        {"partition": 0, "ts": B + 30 * MIN, "response": "Apple"},
        {"partition": 1, "ts": B + 1 * MIN, "response": "Apple"},  # partition 0's stream time is not its own
        {"partition": 0, "ts": B + 2 * MIN, "response": "Pecan"},  # window [B, B+10) closed on partition 0
    ])
    marked = mark_records(entries, size="10min", grace="1min")
    assert list(zip(marked["partition"], marked["status"])) == [(0, "kept"), (0, "dropped-late"), (1, "kept")]


def test_duplicates_are_flagged_and_counted_as_ksqldb_counts_them():
    entries = entries_frame([
        {"ts": B + MIN, "response": "Apple", "entry_id": "a"},
        {"ts": B + 2 * MIN, "response": "Pecan", "entry_id": "b"},
        {"ts": B + 3 * MIN, "response": "Apple", "entry_id": "a"},  # the bot delivered "a" twice
    ])
    marked = mark_records(entries, size="10min")
    assert list(marked["duplicate"]) == [False, False, True]
    assert "duplicate entry id a (first at partition 0 offset 0)" in marked.loc[2, "reason"]
    histogram = windowed_histogram(marked).set_index("option")
    assert histogram.loc["Apple", ["recomputed", "expected", "duplicates"]].tolist() == [1, 2, 1]
    assert histogram.loc["Pecan", ["recomputed", "expected", "duplicates"]].tolist() == [1, 1, 0]


def test_window_status_says_how_far_stream_time_is_from_closing_a_window():
    entries = entries_frame([
        {"ts": B + 1 * MIN, "response": "Apple"},
        {"ts": B + 11 * MIN, "response": "Apple"},  # stream time B+11: [B, B+10) + 1 min grace closes exactly
        {"ts": B + 12 * MIN, "response": "Pecan"},
    ])
    status = window_status(mark_records(entries, size="10min", grace="1min"))
    assert list(status["closed"]) == [True, False]
    assert list(status["closes_in"]) == [pd.Timedelta(0), pd.Timedelta(minutes=9)]
    assert status.loc[1, "explanation"] == (
        "not closed yet: stream time 2025-11-24 16:12:00.000 UTC is 9 min short of window end + "
        "grace 2025-11-24 16:21:00.000 UTC; it closes when a record with a timestamp at or after "
        "2025-11-24 16:21:00.000 UTC arrives on the survey's partition")


def late_scenario():
    """Window 1 = [B, B+10 min), window 2 = [B+10, B+20); grace 1 min; all on partition 0."""
    return entries_frame([
        {"ts": B + 1 * MIN, "response": "Apple", "entry_id": "e0"},
        {"ts": B + 2 * MIN, "response": "Pecan", "entry_id": "e1"},
        {"ts": B + 9 * MIN, "response": "Apple", "entry_id": "e2"},
        {"ts": B + 11 * MIN, "response": "Apple", "entry_id": "e3"},  # stream time B+11 closes window 1
        {"ts": B + 5 * MIN, "response": "Pecan", "entry_id": "e4"},  # late: B+10+1 <= B+11
        {"ts": B + 12 * MIN, "response": "Other", "entry_id": "e5"},
        {"ts": B + 12 * MIN, "response": "Other", "entry_id": "e5"},  # delivered twice
        # A survey without a definition: an inner join drops it, and then it does not advance stream time.
        {"ts": B + 30 * MIN, "response": "Other", "survey_id": "9", "entry_id": "e7"},
    ])


def test_the_comparison_explains_every_difference_on_late_data():
    entries = late_scenario()
    questions = questions_frame(PIE)
    # Keyed by question text and joined with an inner join, as in the talk.
    live = results_frame([("Pie?", {"Apple": 1}), ("Pie?", {"Apple": 3, "Pecan": 2, "Other": 1})])
    final = results_frame([("Pie?", {"Apple": 2, "Pecan": 1}, B)], windowed=True)

    comparison = compare(entries, questions, live=live, final=final, size="10min", grace="1min", join="inner")

    table = {(r.result, r.window_start if r.result == "final" else None, r.option): r for r in comparison.itertuples()}
    assert set(comparison["survey_id"]) == {"1"} and set(comparison["question"]) == {"Pie?"}
    w1, w2 = pd.Timestamp(B, unit="ms", tz="UTC"), pd.Timestamp(B + 10 * MIN, unit="ms", tz="UTC")
    expected = {
        # result, window, option: streamed, recomputed, difference, reason
        ("live", None, "Apple"): (3, 3, 0, "agree"),
        ("live", None, "Pecan"): (2, 2, 0, "agree"),
        ("live", None, "Other"): (1, 1, 0, "duplicate entry id (1); not yet processed (1)"),
        ("final", w1, "Apple"): (2, 2, 0, "agree"),
        ("final", w1, "Pecan"): (1, 2, -1, "late record dropped (1)"),
        ("final", w2, "Apple"): (0, 1, -1, "window not closed yet (1 record(s) waiting): "
                                           "stream time 2025-11-24 16:12:00.000 UTC is 9 min short"),
        ("final", w2, "Other"): (0, 1, -1, "duplicate entry id (1); window not closed yet (2 record(s) waiting)"),
    }
    assert len(comparison) == len(expected)
    for where, (streamed, recomputed, difference, reason) in expected.items():
        row = table[where]
        result, option = where[0], where[2]
        assert (row.streamed, row.recomputed, row.difference) == (streamed, recomputed, difference), option
        assert row.reason.startswith(reason), (result, option, row.reason)
    final_rows = comparison[comparison["result"] == "final"].set_index(["window_start", "option"])
    assert final_rows.loc[(w1, "Pecan"), "late_dropped"] == 1
    assert final_rows.loc[(w1, "Pecan"), "window_closed"]
    assert final_rows.loc[(w2, "Other"), "closes_in"] == pd.Timedelta(minutes=9)
    assert not final_rows.loc[(w2, "Other"), "emitted"]


def test_with_a_left_join_entries_of_undefined_surveys_count_and_advance_stream_time():
    # As ksql/ does it: results keyed by survey id, entries of a survey without a definition counted.
    live = results_frame([("1", {"Apple": 3, "Pecan": 2, "Other": 2})])
    final = results_frame([("1", {"Apple": 2, "Pecan": 1}, B)], windowed=True)
    comparison = compare(late_scenario(), questions_frame(PIE), live=live, final=final, size="10min", grace="1min")
    reasons = {(r.result, r.survey_id, r.window_start if r.result == "final" else None, r.option): r.reason
               for r in comparison.itertuples()}
    w1, w2, w4 = (pd.Timestamp(B + m * MIN, unit="ms", tz="UTC") for m in (0, 10, 30))
    assert reasons == {
        ("live", "1", None, "Apple"): "agree",
        ("live", "1", None, "Pecan"): "agree",
        ("live", "1", None, "Other"): "duplicate entry id (1)",
        ("live", "9", None, "Other"): "not yet processed (1)",
        ("final", "1", w1, "Apple"): "agree",
        ("final", "1", w1, "Pecan"): "late record dropped (1)",
        # Survey 9's entry at B+30 moved partition 0's stream time past window 2's end + grace.
        ("final", "1", w2, "Apple"): "not yet processed (1)",
        ("final", "1", w2, "Other"): "duplicate entry id (1); not yet processed (2)",
        ("final", "9", w4, "Other"): "window not closed yet (1 record(s) waiting): stream time 2025-11-24 "
                                     "16:30:00.000 UTC is 11 min short of window end + grace 2025-11-24 "
                                     "16:41:00.000 UTC; it closes when a record with a timestamp at or after "
                                     "2025-11-24 16:41:00.000 UTC arrives on the survey's partition",
    }
    assert comparison.loc[comparison["survey_id"] == "9", "question"].isna().all()


def test_the_comparison_agrees_on_clean_fully_processed_data():
    entries = entries_frame([
        {"ts": B + 1 * MIN, "response": "Apple"},
        {"ts": B + 4 * MIN, "response": "Pecan"},
        {"ts": B + 12 * MIN, "response": "Apple"},
        {"ts": B + 25 * MIN, "response": "Other"},  # closes window 2 (B+20 + 1 min grace)
    ])
    questions = questions_frame(PIE)
    live = results_frame([("Pie?", {"Apple": 2, "Pecan": 1, "Other": 1})])
    final = results_frame([("Pie?", {"Apple": 1, "Pecan": 1}, B), ("Pie?", {"Apple": 1}, B + 10 * MIN)],
                          windowed=True)
    comparison = compare(entries, questions, live=live, final=final, size="10min", grace="1min")
    closed = comparison[(comparison["result"] == "live") | comparison["window_closed"].eq(True)]
    assert set(closed["reason"]) == {"agree"} and (closed["difference"] == 0).all()
    assert len(closed) == 3 + 3  # live: three options; final: two options in window 1, one in window 2
    still_open = comparison[comparison["window_closed"].eq(False)]
    assert list(still_open["option"]) == ["Other"] and still_open["reason"].iat[0].startswith("window not closed yet")


def test_the_comparison_takes_results_keyed_by_survey_id_and_flags_unexplained_counts():
    entries = entries_frame([{"ts": B + MIN, "response": "Apple"}])
    live = results_frame([("1", {"Apple": 1, "Pecan": 4})])
    comparison = compare(entries, questions_frame(PIE), live=live).set_index("option")
    assert comparison.loc["Apple", "reason"] == "agree"
    assert comparison.loc["Pecan", "reason"] == "unexplained: 4 more streamed than the entries give"
    with pytest.raises(ValueError, match="window size"):
        compare(entries, questions_frame(PIE), final=results_frame([], windowed=True))


def test_final_results_of_a_pipeline_with_another_window_are_told_apart():
    """The final table dropped and created again with another window: the old results stay on the topic."""
    entries = entries_frame([{"ts": B + 1 * MIN, "response": "Apple"}, {"ts": B + 25 * MIN, "response": "Pecan"}])
    final = results_frame([("Pie?", {"Apple": 1}, B + 30_000),  # a 30-second window's, from before
                           ("Pie?", {"Apple": 1}, B)], windowed=True)
    comparison = compare(entries, questions_frame(PIE), final=final, size="10min", grace="1min")
    old = comparison[comparison["window_start"] == pd.Timestamp(B + 30_000, unit="ms", tz="UTC")]
    assert list(old["streamed"]) == [1] and list(old["recomputed"]) == [0]
    assert old["reason"].iat[0].startswith("another window: a 10min window cannot start at this time")
    assert not comparison["reason"].str.contains("unexplained").any()
    this = comparison[comparison["window_start"] == pd.Timestamp(B, unit="ms", tz="UTC")].set_index("option")
    assert this.loc["Apple", "reason"] == "agree"


def test_streamed_histogram_takes_the_latest_record_per_key_and_honours_tombstones():
    live = results_frame([("Pie?", {"Apple": 1}), ("Cake?", {"Lemon": 2}), ("Pie?", {"Apple": 2, "Pecan": None}),
                          ("Cake?", None)])
    tidy = streamed_histogram(live)
    assert tidy.to_dict("records") == [{"key": "Pie?", "option": "Apple", "count": 2}]


def test_live_histogram_lists_every_option_and_can_keep_one_answer_per_respondent():
    entries = entries_frame([
        {"ts": B + 1, "response": "Apple", "user_id": "ann"},
        {"ts": B + 2, "response": "Pecan", "user_id": "bob"},
        {"ts": B + 3, "response": "Pecan", "user_id": "ann"},  # ann changed her mind: latest wins
        {"ts": B + 4, "response": "Other", "survey_id": "9"},  # no such survey
    ])
    questions = questions_frame(PIE)
    all_answers = live_histogram(entries, questions)
    assert dict(zip(zip(all_answers["survey_id"], all_answers["option"]), all_answers["count"])) == {
        ("1", "Apple"): 1, ("1", "Pecan"): 2, ("1", "Other"): 0, ("9", "Other"): 1}
    assert all_answers.loc[all_answers["survey_id"] == "9", "question"].isna().all()
    latest = live_histogram(entries, questions, one_per_respondent=True, join="inner")
    assert latest.set_index("option")["count"].to_dict() == {"Apple": 0, "Pecan": 2, "Other": 0}
    assert list(one_answer_per_respondent(entries)["user_id"]) == ["bob", "ann", "u3"]


def test_survey_definitions_keep_the_latest_record_and_drop_deleted_surveys():
    questions = questions_frame(("1", "Old?", ["a", "b"]), ("2", "Gone?", ["a", "b"]), ("1", "New?", ["a", "b"]))
    questions = pd.concat([questions, pd.DataFrame([{"key": "2", "survey_id": None, "question": None,
                                                     "partition": 0, "offset": 3, "tombstone": True}])])
    definitions = survey_definitions(questions)
    assert definitions[["survey_id", "question"]].values.tolist() == [["1", "New?"]]


def test_wilson_interval_matches_the_reference_values():
    low, high = wilson_interval(8, 10)
    assert (round(low, 4), round(high, 4)) == (0.4902, 0.9433)
    low, high = wilson_interval(0, 10)
    assert low == pytest.approx(0.0, abs=1e-12) and round(high, 4) == 0.2775
    assert all(math.isnan(v) for v in wilson_interval(0, 0))
    lows, highs = wilson_interval([8, 5], [10, 10], confidence=0.99)
    assert lows[0] < 0.4902 and highs[0] > 0.9433
    with pytest.raises(ValueError, match="confidence"):
        wilson_interval(1, 2, confidence=95)


def test_shares_and_breakdowns_by_company_carry_intervals():
    entries = entries_frame(
        [{"ts": B + i, "response": "Apple" if i < 8 else "Pecan", "company": "Acme"} for i in range(10)]
        + [{"ts": B + 20, "response": "Pecan", "company": None}]
    )
    by_company = breakdown(entries, "company", questions_frame(PIE)).set_index(["company", "option"])
    acme = by_company.loc[("Acme", "Apple")]
    assert (acme["count"], acme["total"], acme["share"]) == (8, 10, 0.8)
    assert (round(acme["ci_low"], 4), round(acme["ci_high"], 4)) == (0.4902, 0.9433)
    assert by_company.loc[("(none)", "Pecan"), "total"] == 1 and acme["question"] == "Pie?"
    overall = shares(live_histogram(entries, questions_frame(PIE))).set_index("option")
    assert overall.loc["Apple", "share"] == pytest.approx(8 / 11)
    assert overall.loc["Other", "ci_low"] == pytest.approx(0.0, abs=1e-12)


def test_window_sizes_may_be_written_as_in_ksql():
    marked = mark_records(entries_frame([{"ts": B + 49 * 3_600_000, "response": "x"}]), size="48 HOURS",
                          grace="10 MINUTES")
    assert marked.loc[0, "window_start_ms"] == B - B % (48 * 3_600_000) + 48 * 3_600_000
    assert marked.loc[0, "closes_at_ms"] == marked.loc[0, "window_end_ms"] + 10 * MIN


def test_frames_missing_columns_get_a_clear_message():
    with pytest.raises(ValueError, match="lacks column.*timestamp_ms.*read_topic"):
        mark_records(pd.DataFrame({"survey_id": ["1"], "response": ["x"]}), size="1h")
    with pytest.raises(ValueError, match="not a duration"):
        mark_records(entries_frame([{"ts": 0, "response": "x"}]), size="forever")
