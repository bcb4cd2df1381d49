"""Survey analysis on DataFrames: histograms recomputed from the raw entries, compared with ksqlDB's.

Every function here is pure: frames in, frames out, no Kafka. Read the topics with
:func:`survey_kit.frames.read_topic` first::

    entries   = read_topic(cluster, cluster.topics.entries)
    questions = read_topic(cluster, cluster.topics.questions)
    live      = read_topic(cluster, cluster.topics.results_live)
    final     = read_topic(cluster, cluster.topics.results_final, windowed=True, window_size="48h")

    marked = mark_records(entries, size="48h", grace="10min", questions=questions)  # per entry: kept or why not
    compare(entries, questions, live=live, final=final, size="48h", grace="10min")   # streamed vs recomputed
    shares(live_histogram(entries, questions))                                       # with 95% Wilson intervals
    window_status(marked)                                                            # why a final is not out yet

The recomputation uses pandas (vectorised group-bys; a million entries take about a second), not DuckDB.

How ksqlDB treats records, as its conformance tests pin it (shared/qtt tumbling-windows.json and
suppress.json), and as :func:`mark_records` reproduces it:

- windows are epoch-aligned: a record at ``t`` belongs to ``[t - t % size, t - t % size + size)``;
- stream time is kept per input partition: the largest record timestamp seen so far, in offset order,
  including the record being processed;
- a record is dropped as late when ``window end + grace <= stream time`` at its arrival (``<=``: in
  tumbling-windows.json a record for window [0, 30 s) with a 60 s grace is still counted at stream time
  89 999 ms and dropped at 90 000 ms);
- a window is closed, and EMIT FINAL may emit it, once ``stream time >= window end + grace`` (suppress.json:
  with grace 0 the window [0, 2) is emitted by the record at 2).

Entries of a survey without a definition on survey-questions are counted, as the LEFT JOIN of ksql/
does (``join="left"``, the default), or dropped without advancing stream time, as the talk's inner join
does (``join="inner"``). Streamed results are matched to surveys by key: the survey id (ksql/ groups by
it) or the question text (the talk groups by it).

What this recomputation does not model: stream time of the aggregation is really that of the
repartitioned stream (the same as the input partition's when a survey's entries share one partition, as
with survey-entries keyed by survey id); the question text a result carries is the one known when the
entry was joined; and Kafka Streams' EMIT FINAL can skip windows that one jump in stream time closes
together (suppress.json, "large jump"): such a window shows up here as "not yet processed".
"""

from __future__ import annotations

from collections.abc import Sequence
from statistics import NormalDist

import numpy as np
import pandas as pd

from .frames import DurationLike, duration_ms

__all__ = [
    "survey_definitions", "mark_records", "window_status", "windowed_histogram", "live_histogram",
    "streamed_histogram", "compare", "wilson_interval", "shares", "breakdown", "one_answer_per_respondent",
]

KEPT, DROPPED_LATE, DROPPED_UNKNOWN = "kept", "dropped-late", "dropped-unknown-survey"
ENTRY_COLUMNS = ("survey_id", "user_id", "response", "timestamp_ms", "partition", "offset")


# --- inputs --------------------------------------------------------------------------------------


def survey_definitions(questions: pd.DataFrame) -> pd.DataFrame:
    """The current definition of each survey from a survey-questions frame: the latest record per key
    (a tombstone deletes). Columns survey_id, question, summary, options, enabled."""
    _require(questions, ("key", "survey_id", "question", "partition", "offset"), "survey-questions")
    ordered = questions.sort_values(["partition", "offset"], kind="stable")
    latest = ordered.drop_duplicates("key", keep="last")
    if "tombstone" in latest.columns:
        latest = latest[~latest["tombstone"].astype(bool)]
    columns = [c for c in ("survey_id", "question", "summary", "options", "enabled") if c in latest.columns]
    return latest[columns].sort_values("survey_id", kind="stable").reset_index(drop=True)


def one_answer_per_respondent(entries: pd.DataFrame) -> pd.DataFrame:
    """Only each respondent's latest answer per survey (latest timestamp wins; on a tie, the later offset)."""
    _require(entries, ENTRY_COLUMNS, "survey-entries")
    ordered = entries.sort_values(["timestamp_ms", "partition", "offset"], kind="stable")
    return ordered.drop_duplicates(["survey_id", "user_id"], keep="last").sort_values(
        ["partition", "offset"], kind="stable").reset_index(drop=True)


# --- records: kept or dropped, and why -------------------------------------------------------------


def mark_records(
    entries: pd.DataFrame,
    size: DurationLike,
    grace: DurationLike = "0s",
    questions: pd.DataFrame | None = None,
    join: str = "left",
) -> pd.DataFrame:
    """Each entry with what ksqlDB's windowed aggregation does with it, and why.

    Adds to the entries (in partition, offset order): ``window_start``, ``window_end``, ``closes_at``
    (window end + grace), ``stream_time`` (of its partition when it arrives), ``question`` (when
    ``questions`` is given), ``duplicate`` (its entry_id header was delivered before: ksqlDB counts it
    again), ``status`` (``kept``, ``dropped-late``, or ``dropped-unknown-survey``) and ``reason`` (a
    sentence, e.g. why a record was late). Datetimes are UTC; the ``*_ms`` twins hold epoch milliseconds.

    ``join`` is how the pipeline joins entries to survey-questions: ``"left"`` as the project's ksql/ files
    do (an entry of a survey without a definition is still counted), ``"inner"`` as the talk's slides do
    (such an entry is dropped, ``dropped-unknown-survey``, and does not advance stream time).
    """
    size_ms = duration_ms(size, "size")
    grace_ms = duration_ms(grace, "grace", allow_zero=True)
    marked = _mark_entries(entries, questions, join)
    timestamps = marked["timestamp_ms"].to_numpy(dtype="int64")
    starts = timestamps - np.mod(timestamps, size_ms)
    marked["window_start_ms"] = starts
    marked["window_end_ms"] = starts + size_ms
    marked["closes_at_ms"] = starts + size_ms + grace_ms
    # Stream time advances with the records that reach the aggregation: not those the join drops.
    unknown = marked["status"].eq(DROPPED_UNKNOWN).to_numpy()
    earliest = np.iinfo("int64").min
    reaching = pd.Series(np.where(unknown, earliest, timestamps), index=marked.index)
    stream_time = reaching.groupby(marked["partition"], sort=False).cummax().to_numpy()
    marked["stream_time_ms"] = np.where(stream_time == earliest, timestamps, stream_time)
    for column in ("window_start", "window_end", "closes_at", "stream_time"):
        marked[column] = pd.to_datetime(marked[f"{column}_ms"], unit="ms", utc=True)
    late = (marked["closes_at_ms"] <= marked["stream_time_ms"]).to_numpy() & ~unknown
    marked.loc[late, "status"] = DROPPED_LATE
    marked["reason"] = _record_reasons(marked, late, unknown)
    return marked


def _mark_entries(entries: pd.DataFrame, questions: pd.DataFrame | None, join: str = "left") -> pd.DataFrame:
    """Entries in partition, offset order with ``duplicate``, ``question`` and a first ``status``
    (kept, or dropped-unknown-survey when an inner join finds no definition of the survey)."""
    if join not in ("left", "inner"):
        raise ValueError(f"join must be 'left' (as ksql/ does) or 'inner' (as the talk does), not {join!r}")
    _require(entries, ENTRY_COLUMNS, "survey-entries")
    marked = entries
    if "tombstone" in marked.columns:  # ksqlDB skips null values; survey-entries should have none
        marked = marked[~marked["tombstone"].astype(bool)]
    marked = marked.sort_values(["partition", "offset"], kind="stable").reset_index(drop=True)
    entry_ids = marked["entry_id"] if "entry_id" in marked.columns else pd.Series(None, index=marked.index)
    marked["duplicate"] = (entry_ids.notna() & entry_ids.duplicated(keep="first")).to_numpy()
    marked["status"] = KEPT
    if questions is not None:
        definitions = survey_definitions(questions)
        marked["question"] = marked["survey_id"].map(dict(zip(definitions["survey_id"], definitions["question"])))
        if join == "inner":
            known = marked["survey_id"].isin(set(definitions["survey_id"]))
            marked.loc[~known, "status"] = DROPPED_UNKNOWN
    return marked


def _record_reasons(marked: pd.DataFrame, late: np.ndarray, unknown: np.ndarray) -> pd.Series:
    reasons = pd.Series("kept: its window was open when it arrived", index=marked.index, dtype=object)
    if late.any():
        rows = marked[late]
        reasons[late] = [
            f"late record dropped: window [{_t(start)}, {_t(end)}) closed at end + grace = {_t(closes)}, and "
            f"partition {partition} had reached stream time {_t(now)} ({_span(now_ms - closes_ms)} past it)"
            for start, end, closes, now, partition, now_ms, closes_ms in zip(
                rows["window_start"], rows["window_end"], rows["closes_at"], rows["stream_time"],
                rows["partition"], rows["stream_time_ms"], rows["closes_at_ms"])
        ]
    if unknown.any():
        reasons[unknown] = [f"dropped: survey {survey_id!r} has no definition on survey-questions"
                            for survey_id in marked.loc[unknown, "survey_id"]]
    duplicates = marked["duplicate"].to_numpy()
    if duplicates.any():
        first = marked[~marked["duplicate"]].drop_duplicates("entry_id").set_index("entry_id")
        repeated = marked[duplicates]
        reasons[duplicates] = [
            f"{reason}; duplicate entry id {entry_id} (first at partition {first.at[entry_id, 'partition']} "
            f"offset {first.at[entry_id, 'offset']}): ksqlDB counts it again"
            for reason, entry_id in zip(reasons[duplicates], repeated["entry_id"])
        ]
    return reasons


# --- windows: closed or not, and how far from closing ----------------------------------------------


def window_status(marked: pd.DataFrame) -> pd.DataFrame:
    """Per survey and window of :func:`mark_records`' output: is it closed, and if not, why not yet.

    Columns survey_id, window_start, window_end, closes_at, stream_time (now, of the partition holding
    the survey's entries; the lowest if several), closed, closes_in (how much stream time must still
    advance; zero when closed) and explanation. A window is closed, so EMIT FINAL can emit it, once stream
    time >= window end + grace; stream time only advances with new records on that partition.
    """
    _require(marked, ("survey_id", "partition", "window_start_ms", "closes_at_ms", "stream_time_ms"),
             "mark_records() output")
    if "status" in marked.columns:
        marked = marked[marked["status"] != DROPPED_UNKNOWN]
    partition_time = marked.groupby("partition")["stream_time_ms"].max()
    survey_time = (marked[["survey_id", "partition"]].drop_duplicates()
                   .assign(now=lambda f: f["partition"].map(partition_time))
                   .groupby("survey_id")["now"].min())
    windows = (marked.groupby(["survey_id", "window_start_ms"], as_index=False)
               .agg(window_end_ms=("window_end_ms", "first"), closes_at_ms=("closes_at_ms", "first")))
    windows["stream_time_ms"] = windows["survey_id"].map(survey_time).astype("int64")
    windows["closed"] = windows["stream_time_ms"] >= windows["closes_at_ms"]
    remaining = (windows["closes_at_ms"] - windows["stream_time_ms"]).clip(lower=0)
    windows["closes_in"] = pd.to_timedelta(remaining, unit="ms")
    for column in ("window_start", "window_end", "closes_at", "stream_time"):
        windows[column] = pd.to_datetime(windows[f"{column}_ms"], unit="ms", utc=True)
    windows["explanation"] = [
        f"closed: stream time {_t(now)} has reached window end + grace {_t(closes)}" if closed else
        f"not closed yet: stream time {_t(now)} is {_span(left)} short of window end + grace {_t(closes)}; "
        f"it closes when a record with a timestamp at or after {_t(closes)} arrives on the survey's partition"
        for closed, now, closes, left in zip(windows["closed"], windows["stream_time"], windows["closes_at"],
                                             remaining)
    ]
    return windows[["survey_id", "window_start", "window_end", "closes_at", "stream_time", "closed",
                    "closes_in", "explanation"]]


# --- recomputed histograms -------------------------------------------------------------------------


def windowed_histogram(marked: pd.DataFrame) -> pd.DataFrame:
    """Counts per survey, window and option from :func:`mark_records`' output.

    Columns survey_id, question (if known), window_start, window_end, option, ``recomputed`` (distinct
    entries in the window, whether ksqlDB drops them or not: what the window really holds), ``expected``
    (what ksqlDB's final result should show: kept records, duplicates included), ``late_dropped``
    (distinct entries dropped as late) and ``duplicates`` (kept repeated deliveries);
    expected = recomputed - late_dropped - unknown_survey + duplicates.
    """
    _require(marked, ("status", "duplicate", "window_start_ms", "window_end_ms"), "mark_records() output")
    keys = ["survey_id"] + (["question"] if "question" in marked.columns else []) + ["window_start_ms",
                                                                                    "window_end_ms", "response"]
    counted = marked.assign(
        recomputed=~marked["duplicate"],
        expected=marked["status"].eq(KEPT),
        late_dropped=marked["status"].eq(DROPPED_LATE) & ~marked["duplicate"],
        unknown_survey=marked["status"].eq(DROPPED_UNKNOWN) & ~marked["duplicate"],
        duplicates=marked["status"].eq(KEPT) & marked["duplicate"],
    )
    counts = ["recomputed", "expected", "late_dropped", "unknown_survey", "duplicates"]
    histogram = counted.groupby(keys, as_index=False, dropna=False)[counts].sum()
    histogram[counts] = histogram[counts].astype("int64")
    histogram["window_start"] = pd.to_datetime(histogram.pop("window_start_ms"), unit="ms", utc=True)
    histogram["window_end"] = pd.to_datetime(histogram.pop("window_end_ms"), unit="ms", utc=True)
    histogram = histogram.rename(columns={"response": "option"})
    front = ["survey_id"] + (["question"] if "question" in histogram.columns else []) + [
        "window_start", "window_end", "option"]
    return histogram[front + counts]


def live_histogram(
    entries: pd.DataFrame,
    questions: pd.DataFrame | None = None,
    *,
    one_per_respondent: bool = False,
    distinct_entries: bool = True,
    join: str = "left",
) -> pd.DataFrame:
    """The all-time histogram per survey: survey_id, question (with ``questions``), option, count.

    With ``questions``, every option of each survey's definition is listed (zero if nobody chose it);
    entries for surveys without a definition are listed with no question (``join="left"``, as ksql/
    counts them) or left out (``join="inner"``, as the talk's join drops them). Each entry
    id counts once unless ``distinct_entries=False`` (which counts redeliveries, as ksqlDB does);
    ``one_per_respondent`` keeps only each user's latest answer per survey.
    """
    _require(entries, ENTRY_COLUMNS, "survey-entries")
    chosen = entries[~entries["tombstone"].astype(bool)] if "tombstone" in entries.columns else entries
    if distinct_entries and "entry_id" in chosen.columns:
        chosen = chosen[~(chosen["entry_id"].notna() & chosen["entry_id"].duplicated(keep="first"))]
    if one_per_respondent:
        chosen = one_answer_per_respondent(chosen)
    counts = chosen.groupby(["survey_id", "response"]).size().rename("count").reset_index()
    counts = counts.rename(columns={"response": "option"})
    if questions is None:
        return counts.sort_values(["survey_id", "option"], ignore_index=True)
    if join not in ("left", "inner"):
        raise ValueError(f"join must be 'left' (as ksql/ does) or 'inner' (as the talk does), not {join!r}")
    definitions = survey_definitions(questions)
    options = definitions[["survey_id", "question", "options"]].explode("options").rename(columns={"options": "option"})
    # Options someone answered that the definition does not list still count (a changed definition).
    answered = counts.merge(definitions[["survey_id", "question"]], on="survey_id", how=join)[
        ["survey_id", "question", "option"]]
    every = pd.concat([options.dropna(subset=["option"]), answered]).drop_duplicates(["survey_id", "option"])
    histogram = every.merge(counts, on=["survey_id", "option"], how="left")
    histogram["count"] = histogram["count"].fillna(0).astype("int64")
    return histogram.reset_index(drop=True)


def streamed_histogram(results: pd.DataFrame, results_column: str = "RESULTS") -> pd.DataFrame:
    """ksqlDB's HISTOGRAM results as tidy rows: key, [window_start, window_end,] option, count.

    Takes a frame of survey-results-live (a table: the latest record per key counts, a tombstone deletes)
    or of survey-results-final read with ``windowed=True`` (the latest record per key and window).
    """
    _require(results, ("key", "partition", "offset", results_column), "results")
    window = [c for c in ("window_start", "window_end") if c in results.columns]
    latest = results.sort_values(["partition", "offset"], kind="stable").drop_duplicates(["key"] + window[:1], keep="last")
    if "tombstone" in latest.columns:
        latest = latest[~latest["tombstone"].astype(bool)]
    rows = [
        (key, *window_values, option, count)
        for key, histogram, *window_values in zip(latest["key"], latest[results_column], *(latest[c] for c in window))
        if isinstance(histogram, dict)
        for option, count in histogram.items()
        if count is not None
    ]
    tidy = pd.DataFrame(rows, columns=["key", *window, "option", "count"])
    tidy["count"] = tidy["count"].astype("int64")
    return tidy


# --- streamed vs recomputed ------------------------------------------------------------------------


COMPARISON_COLUMNS = ["result", "survey_id", "question", "window_start", "window_end", "option", "streamed",
                      "recomputed", "difference", "reason", "expected", "late_dropped", "duplicates",
                      "emitted", "window_closed", "closes_in"]


def compare(
    entries: pd.DataFrame,
    questions: pd.DataFrame,
    *,
    live: pd.DataFrame | None = None,
    final: pd.DataFrame | None = None,
    size: DurationLike | None = None,
    grace: DurationLike = "0s",
    results_column: str = "RESULTS",
    join: str = "left",
) -> pd.DataFrame:
    """Streamed results (survey-results-live and/or -final frames) next to the recomputation, row by row.

    One row per result ("live" rows first, then "final"), survey, window (final only) and option, with
    columns: ``streamed`` (ksqlDB's count, 0 if it has none), ``recomputed`` (distinct entries),
    ``difference`` (streamed - recomputed), ``reason`` ("agree", or each cause with its number of records:
    "late record dropped (2)", "duplicate entry id (1)", "not yet processed (3)", "window not closed yet
    ...", "another window: ..." (a result written by a pipeline with another window size), "unexplained
    ..."), ``expected`` (what ksqlDB should show by its rules), ``late_dropped``, ``duplicates``,
    ``emitted`` (the stream has a record for it), ``window_closed`` and ``closes_in``.

    Results are matched to surveys by their key: the survey id, as ksql/ groups them, or the question
    text, as the talk groups them (used when it names exactly one survey). ``join``: see :func:`mark_records`.
    """
    if live is None and final is None:
        raise ValueError("nothing to compare: pass live= (survey-results-live) and/or final= (survey-results-final)")
    definitions = survey_definitions(questions)
    parts = []
    if live is not None:
        marked = _mark_entries(entries, questions, join)
        rows = _joined(_counts(marked, ["survey_id", "response"]),
                       _streamed_by_survey(streamed_histogram(live, results_column), definitions), ["survey_id", "option"])
        rows["result"] = "live"
        rows["window_start"] = rows["window_end"] = pd.Series(pd.NaT, index=rows.index, dtype="datetime64[ms, UTC]")
        rows["window_closed"] = pd.Series(pd.NA, index=rows.index, dtype="boolean")
        rows["closes_in"] = pd.Series(pd.NaT, index=rows.index, dtype="timedelta64[ms]")
        rows["explanation"] = None
        rows["other_window"] = False
        parts.append(_finish(rows, definitions, live=True))
    if final is not None:
        if size is None:
            raise ValueError("comparing final results needs the window size (size=..., e.g. '48h') and grace")
        parts.append(_compare_final(entries, questions, definitions, final, size, grace, results_column, join))
    return pd.concat(parts, ignore_index=True)


def _compare_final(entries, questions, definitions, final, size, grace, results_column, join) -> pd.DataFrame:
    size_ms = duration_ms(size, "size")
    marked = mark_records(entries, size=size, grace=grace, questions=questions, join=join)
    streamed = streamed_histogram(final, results_column)
    streamed["window_start_ms"] = _epoch_ms_of(streamed["window_start"]) if len(streamed) else pd.Series(dtype="int64")
    streamed = streamed.drop(columns=[c for c in ("window_start", "window_end") if c in streamed.columns])
    keys = ["survey_id", "window_start_ms", "option"]
    rows = _joined(_counts(marked, ["survey_id", "window_start_ms", "response"]),
                   _streamed_by_survey(streamed, definitions), keys)
    rows["window_start_ms"] = rows["window_start_ms"].astype("int64")
    # A window closes by the stream time of the partition(s) its survey's entries are on.
    status = window_status(marked)
    status["window_start_ms"] = _epoch_ms_of(status["window_start"])
    status = status.rename(columns={"closed": "window_closed"})[
        ["survey_id", "window_start_ms", "window_closed", "closes_in", "explanation"]]
    rows = rows.merge(status, on=["survey_id", "window_start_ms"], how="left")
    # Tumbling windows start at multiples of their size since the epoch: a result whose window starts
    # elsewhere was written by a pipeline with another window (one dropped and created again; its
    # results stay on the topic), and is not this window's to compare.
    other_window = rows["emitted"] & (rows["window_start_ms"] % size_ms != 0)
    rows.loc[other_window, "explanation"] = (
        f"another window: a {size} window cannot start at this time (tumbling windows start at multiples of "
        "their size), so a pipeline with another window size wrote this result")
    rows["other_window"] = other_window
    rows["result"] = "final"
    rows["window_start"] = pd.to_datetime(rows["window_start_ms"], unit="ms", utc=True).astype("datetime64[ms, UTC]")
    rows["window_end"] = pd.to_datetime(rows["window_start_ms"] + size_ms, unit="ms", utc=True).astype(
        "datetime64[ms, UTC]")
    rows["window_closed"] = rows["window_closed"].astype("boolean")
    rows["closes_in"] = pd.to_timedelta(rows["closes_in"]).astype("timedelta64[ms]")
    return _finish(rows, definitions, live=False)


def _counts(marked: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """recomputed / expected / late_dropped / duplicates per keys (surveys a join drops left out)."""
    known = marked[marked["status"] != DROPPED_UNKNOWN]
    late = known["status"].eq(DROPPED_LATE)
    counted = known.assign(
        recomputed=~known["duplicate"],
        expected=~late,
        late_dropped=late & ~known["duplicate"],
        duplicates=~late & known["duplicate"],
    ).groupby(keys, as_index=False)[["recomputed", "expected", "late_dropped", "duplicates"]].sum()
    return counted.rename(columns={"response": "option"})


def _streamed_by_survey(streamed: pd.DataFrame, definitions: pd.DataFrame) -> pd.DataFrame:
    """Streamed rows with the survey id their key names: the key itself, or the one survey asking it."""
    ids = set(definitions["survey_id"])
    asked = definitions.groupby("question")["survey_id"].agg(list)
    by_question = {question: found[0] for question, found in asked.items() if len(found) == 1}
    streamed = streamed.assign(survey_id=[k if k in ids else by_question.get(k, k) for k in streamed["key"]])
    streamed = streamed.drop(columns="key").rename(columns={"count": "streamed"})
    streamed["emitted"] = True
    return streamed


def _joined(counted: pd.DataFrame, streamed: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    rows = counted.merge(streamed, on=keys, how="outer")
    for column in ("recomputed", "expected", "late_dropped", "duplicates", "streamed"):
        rows[column] = rows[column].fillna(0).astype("int64")
    rows["emitted"] = rows["emitted"].fillna(False).astype(bool)
    rows["difference"] = rows["streamed"] - rows["recomputed"]
    return rows


def _finish(rows: pd.DataFrame, definitions: pd.DataFrame, live: bool) -> pd.DataFrame:
    rows["question"] = rows["survey_id"].map(dict(zip(definitions["survey_id"], definitions["question"])))
    rows["reason"] = [
        _reason(s, r, e, l, d, emitted, live, closed, explanation, other_window)
        for s, r, e, l, d, emitted, closed, explanation, other_window in zip(
            rows["streamed"], rows["recomputed"], rows["expected"], rows["late_dropped"], rows["duplicates"],
            rows["emitted"], rows["window_closed"], rows["explanation"], rows["other_window"])
    ]
    order = ["survey_id", "window_start", "option"]
    return rows.sort_values(order, kind="stable", ignore_index=True)[COMPARISON_COLUMNS]


def _reason(streamed, recomputed, expected, late, duplicates, emitted, live, closed, explanation, other_window) -> str:
    if other_window:
        return explanation  # not this window's result: its counts are no evidence either way
    if streamed == recomputed == expected:
        return "agree"
    causes = []
    if late:
        causes.append(f"late record dropped ({late})")
    if duplicates:
        causes.append(f"duplicate entry id ({duplicates})")
    missing = expected - streamed
    window_open = closed is not None and not pd.isna(closed) and not closed
    if not live and not emitted and window_open:
        causes.append(f"window not closed yet ({expected} record(s) waiting): "
                      f"{explanation.removeprefix('not closed yet: ')}")
    elif missing > 0 and (live or not emitted):
        causes.append(f"not yet processed ({missing})")
    elif missing > 0:
        causes.append(f"unexplained: {missing} kept record(s) missing from the final result")
    elif missing < 0:
        causes.append(f"unexplained: {-missing} more streamed than the entries give")
    return "; ".join(causes)


# --- shares and breakdowns ---------------------------------------------------------------------------


def wilson_interval(successes, total, confidence: float = 0.95) -> tuple:
    """The Wilson score interval of a share ``successes / total`` (arrays or numbers); NaN where total is 0.

    >>> wilson_interval(8, 10)   # (0.4902, 0.9433)
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence is a probability between 0 and 1, got {confidence}")
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    k = np.asarray(successes, dtype="float64")
    n = np.asarray(total, dtype="float64")
    with np.errstate(invalid="ignore", divide="ignore"):
        p = k / n
        denominator = 1 + z**2 / n
        centre = (p + z**2 / (2 * n)) / denominator
        half = z * np.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / denominator
        low, high = np.where(n > 0, centre - half, np.nan), np.where(n > 0, centre + half, np.nan)
    if low.ndim == 0:
        return float(low), float(high)
    return low, high


def shares(
    histogram: pd.DataFrame,
    by: Sequence[str] = ("survey_id",),
    count: str = "count",
    confidence: float = 0.95,
) -> pd.DataFrame:
    """Add ``total`` (per ``by`` group), ``share`` and its Wilson interval ``ci_low``/``ci_high``.

    Works on :func:`live_histogram`, :func:`breakdown` (by=("survey_id", "company")) or a windowed
    histogram (by=("survey_id", "window_start"), count="recomputed").
    """
    _require(histogram, (*by, count), "histogram")
    result = histogram.copy()
    result["total"] = result.groupby(list(by), dropna=False)[count].transform("sum").astype("int64")
    with np.errstate(invalid="ignore", divide="ignore"):
        result["share"] = np.where(result["total"] > 0, result[count] / result["total"], np.nan)
    result["ci_low"], result["ci_high"] = wilson_interval(result[count], result["total"], confidence)
    return result


def breakdown(
    entries: pd.DataFrame,
    by: str | Sequence[str] = "company",
    questions: pd.DataFrame | None = None,
    *,
    one_per_respondent: bool = False,
    confidence: float = 0.95,
) -> pd.DataFrame:
    """Answers per survey, group (e.g. company or location; missing values as "(none)") and option, with
    each option's share within its group and the Wilson interval: survey_id, [question,] <by...>, option,
    count, total, share, ci_low, ci_high."""
    groups = [by] if isinstance(by, str) else list(by)
    _require(entries, (*ENTRY_COLUMNS, *groups), "survey-entries")
    chosen = entries[~entries["tombstone"].astype(bool)] if "tombstone" in entries.columns else entries
    if "entry_id" in chosen.columns:
        chosen = chosen[~(chosen["entry_id"].notna() & chosen["entry_id"].duplicated(keep="first"))]
    if one_per_respondent:
        chosen = one_answer_per_respondent(chosen)
    chosen = chosen.assign(**{g: chosen[g].astype(object).where(chosen[g].notna(), "(none)") for g in groups})
    counts = (chosen.groupby(["survey_id", *groups, "response"]).size().rename("count").reset_index()
              .rename(columns={"response": "option"}))
    if questions is not None:
        definitions = survey_definitions(questions)
        counts = counts.merge(definitions[["survey_id", "question"]], on="survey_id", how="left")
        counts = counts[["survey_id", "question", *groups, "option", "count"]]
    return shares(counts, by=("survey_id", *groups), confidence=confidence)


# --- helpers ---------------------------------------------------------------------------------------


def _require(frame: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(
            f"the {what} frame lacks column(s) {', '.join(missing)}: read it with "
            "survey_kit.frames.read_topic (windowed=True for windowed results)"
        )


def _epoch_ms_of(times: pd.Series) -> pd.Series:
    return (pd.to_datetime(times, utc=True) - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(milliseconds=1)


def _t(moment: pd.Timestamp) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + " UTC"


def _span(milliseconds: int) -> str:
    """A duration for people: "2 d 3 h 9 min", "1.250 s"."""
    seconds, millis = divmod(int(milliseconds), 1000)
    minutes, seconds = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    parts = [f"{days} d" if days else "", f"{hours} h" if hours else "", f"{minutes} min" if minutes else "",
             (f"{seconds}.{millis:03d} s" if millis else f"{seconds} s") if seconds or millis else ""]
    return " ".join(part for part in parts if part) or "0 s"
