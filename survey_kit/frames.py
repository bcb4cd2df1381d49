"""Kafka topics as pandas DataFrames: read a whole topic or a time range, or tail it live.

>>> entries = read_topic(cluster, cluster.topics.entries)               # every survey entry
>>> today = read_topic(cluster, cluster.topics.entries, start="2026-11-25", end="2026-11-26")
>>> final = read_topic(cluster, cluster.topics.results_final, windowed=True, window_size="48h")
>>> with tail(cluster, cluster.topics.entries) as rows:              # new entries as they arrive
...     for batch in rows: print(len(batch))

A frame has one row per record and these columns:

- ``key``: the record key as text (``None`` for a null key); with ``windowed=True`` the key without its
  window, plus ``window_start`` and, when ``window_size`` is given, ``window_end`` (UTC datetimes)
- one column per field of the Avro value, named as in the schema (ksqlDB uppercases its names, e.g.
  ``RESULTS``); a field whose name clashes with a column below is prefixed ``value_``
- ``timestamp`` (UTC datetime) and ``timestamp_ms`` (the raw Kafka timestamp), ``partition``, ``offset``
- ``entry_id`` (the header the survey bot writes; ``None`` when absent) and ``headers`` (all headers as a
  dict of text, ``None`` when the record has none)
- ``tombstone``: the record has a null value (a deletion on a compacted topic); its value columns are empty

Rows are ordered by partition, then offset. Records that cannot be decoded (not the registry's wire
format, unknown schema id, corrupt Avro, a windowed key too short) are not dropped silently: they are
listed in ``frame.attrs["errors"]`` (see :func:`errors_frame`), counted in ``frame.attrs["error_count"]``,
and a warning says how many there were; ``on_error="raise"`` stops at the first one instead. A Schema
Registry that cannot be asked is not the records' fault: a read stops with RegistryUnavailable (a
ConnectionError saying what to check), a tail waits for the registry and decodes the same records then.

Values are decoded with fastavro's schemaless reader straight from the bytes after the 5-byte header,
with the writer's schema fetched once per schema id from the registry: several times faster than
confluent-kafka's AvroDeserializer per record (see ``benchmarks/frames.py``).
"""

from __future__ import annotations

import io
import itertools
import json
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from typing import Any

import fastavro
import numpy as np
import pandas as pd
from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, KafkaError, KafkaException, Message, TopicPartition
from tqdm.auto import tqdm

from .cluster import Cluster
from .consume import MalformedRecord, partitions_of, read_messages
from .serde import RegistryUnavailable, fetch_schema

__all__ = ["read_topic", "errors_frame", "tail", "TopicTail", "MalformedRecord", "ENTRY_ID_HEADER", "duration_ms"]

ENTRY_ID_HEADER = "entry_id"
METADATA_COLUMNS = ("key", "window_start", "window_end", "timestamp", "timestamp_ms", "partition", "offset",
                    "entry_id", "headers", "tombstone")
ERROR_COLUMNS = ["topic", "partition", "offset", "timestamp_ms", "key", "error"]

TimeLike = datetime | pd.Timestamp | str | int
DurationLike = timedelta | pd.Timedelta | str | int


def read_topic(
    cluster: Cluster,
    topic: str,
    *,
    start: TimeLike | None = None,
    end: TimeLike | None = None,
    windowed: bool = False,
    window_size: DurationLike | None = None,
    progress: bool = True,
    on_error: str = "collect",
    timeout: float = 30.0,
    batch_size: int = 10_000,
) -> pd.DataFrame:
    """Every record of ``topic`` as it is when reading starts, or those with a timestamp in [start, end).

    ``start``/``end`` are datetimes, ISO strings (UTC unless they say otherwise) or epoch milliseconds.
    The range is decided by each record's own timestamp, so out-of-order records are found wherever they
    are in the log; the read goes through the whole topic (no seeking by time: the embedded broker's
    offsets_for_times is wrong, see tests/test_broker_quirks.py). ``windowed=True`` decodes Kafka Streams time-windowed keys (ksqlDB's windowed tables);
    ``window_size`` (e.g. ``"48h"``) adds ``window_end``. ``progress`` shows a tqdm bar when a read takes
    more than a second. ``batch_size`` records are decoded at a time. ``timeout`` bounds how long it waits for Kafka without receiving anything.
    """
    if on_error not in ("collect", "raise"):
        raise ValueError(f"on_error must be 'collect' or 'raise', not {on_error!r}")
    start_ms = _epoch_ms(start, "start") if start is not None else None
    end_ms = _epoch_ms(end, "end") if end is not None else None
    if start_ms is not None and end_ms is not None and end_ms <= start_ms:
        raise ValueError(f"the time range is empty: end ({end}) must be after start ({start})")
    builder = _RowBuilder(cluster, topic, windowed=windowed, window_size=window_size, raise_errors=on_error == "raise")
    # The end of the topic is decided by consume.read_messages (end-of-partition events, never the listed
    # high watermark). Measured here, its poll() per record is as fast as consume() in batches.
    records = read_messages(cluster, topic, timeout=timeout)
    try:
        with tqdm(desc=topic, unit=" records", disable=not progress, delay=1.0, leave=False) as bar:
            while chunk := list(itertools.islice(records, batch_size)):
                builder.add(chunk, start_ms, end_ms)
                bar.update(len(chunk))
    finally:
        records.close()  # its consumer, also when decoding stopped the read
    return builder.frame(warn=True)


def errors_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """The records :func:`read_topic` (or a tail) could not decode: topic, partition, offset, timestamp_ms,
    key (raw bytes) and error."""
    return pd.DataFrame(list(frame.attrs.get("errors", [])), columns=ERROR_COLUMNS)


def tail(cluster: Cluster, topic: str, **options: Any) -> TopicTail:
    """A :class:`TopicTail` of ``topic``: iterate it (or ``start()`` it in a thread) to get new rows."""
    return TopicTail(cluster, topic, **options)


class TopicTail:
    """New records of a topic as small DataFrames (columns as :func:`read_topic`), as they arrive.

    >>> with TopicTail(cluster, "survey-entries", idle_timeout=60) as rows:
    ...     for batch in rows:              # ends on stop(), or after 60 s without a record
    ...         update_chart(batch)

    >>> live = TopicTail(cluster, "survey-results-live", from_beginning=True)
    >>> live.start(on_rows=handle)          # a background thread calls handle(batch) per batch
    >>> live.stop()                         # returns once the thread has ended and the consumer is closed

    It starts at the end of the topic (records written after it started), or at the beginning with
    ``from_beginning=True``. Nothing blocks longer than ``poll_timeout`` seconds, so ``stop()`` takes
    effect quickly and :meth:`poll` can be called from a loop that also does other work. Records that do
    not decode are kept in ``errors`` (a list of dicts, as in :func:`errors_frame`); transient Kafka errors
    do not end a tail (the latest is in ``last_error``), fatal ones raise. While the Schema Registry cannot
    be asked, the tail holds the records it could not decode yet, reads nothing new and tries them again at
    each poll (``last_error`` says why); they come out in order once it answers. ``waiting`` puts either
    trouble in a sentence for a person watching.
    """

    def __init__(
        self,
        cluster: Cluster,
        topic: str,
        *,
        from_beginning: bool = False,
        windowed: bool = False,
        window_size: DurationLike | None = None,
        poll_timeout: float = 0.5,
        idle_timeout: float | None = None,
        batch_size: int = 1_000,
    ):
        self.topic = topic
        self.poll_timeout = poll_timeout
        self.idle_timeout = idle_timeout
        self.batch_size = batch_size
        self.errors: list[dict[str, Any]] = []
        self.last_error: KafkaError | RegistryUnavailable | None = None  # the latest transient error, if any
        self._kafka_trouble: tuple[float, KafkaError] | None = None  # a Kafka error since the last records, and when
        self._cluster = cluster
        self._windowed = windowed
        self._window_size = window_size
        self._schemas: dict = {}  # writer schemas by id, fetched once for the whole tail
        self._undecoded: list[Message] = []  # records waiting for the Schema Registry to answer
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        partitions = partitions_of(cluster, topic)
        # librdkafka hands connection trouble (a broker gone, refused, timing out) to error_cb, not to consume()
        self._consumer: Consumer | None = Consumer(cluster.consumer_config(**{"enable.partition.eof": True, "error_cb": self._client_error}))
        # Starting "at the end" resolves the end through the listed high watermark, which the embedded
        # broker reports too early; records before each partition's first end-of-partition event are
        # therefore skipped, which is right on any broker.
        position = OFFSET_BEGINNING if from_beginning else OFFSET_END
        self._from_beginning = from_beginning
        self._before_end = set(partitions)  # partitions whose end has not been reached yet
        self._consumer.assign([TopicPartition(topic, p, position) for p in partitions])

    def poll(self, timeout: float | None = None) -> pd.DataFrame:
        """The records that arrived within ``timeout`` seconds (default ``poll_timeout``); maybe none."""
        with self._lock:
            if self._consumer is None:
                raise RuntimeError(f"the tail of {self.topic!r} is stopped")
            timeout = self.poll_timeout if timeout is None else timeout
            if self._undecoded:
                # nothing new until these are decoded: the rows stay in order and memory stays bounded
                self._stopped.wait(timeout)
                return self._decode(self._undecoded)
            messages = self._consumer.consume(self.batch_size, timeout)
            records = []
            for message in messages:
                error = message.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        self._before_end.discard(message.partition())
                        continue
                    if error.fatal():
                        raise KafkaException(error)
                    # Transient (a broker restarting, a connection dropped): librdkafka retries by itself,
                    # and a live view should keep going; the error stays visible here.
                    self._client_error(error)
                    continue
                if self._from_beginning or message.partition() not in self._before_end:
                    records.append(message)
            if records:
                self._kafka_trouble = None
            return self._decode(records)

    def _client_error(self, error: KafkaError) -> None:
        self.last_error = error
        self._kafka_trouble = (time.time(), error)

    def _decode(self, records: list[Message]) -> pd.DataFrame:
        builder = self._builder()
        try:
            builder.add(records)
        except RegistryUnavailable as exc:
            self._undecoded, self.last_error = records, exc
            return self._builder().frame(warn=False)  # no rows: the whole batch is decoded again next time
        self._undecoded = []
        batch = builder.frame(warn=False)
        self.errors.extend(batch.attrs["errors"])
        return batch

    def _builder(self) -> _RowBuilder:
        return _RowBuilder(self._cluster, self.topic, windowed=self._windowed, window_size=self._window_size,
                           schemas=self._schemas, describe_empty=False)

    @property
    def waiting(self) -> str | None:
        """Why no rows may be coming, for a person watching (None: nothing is wrong that the tail knows of).

        While the Schema Registry cannot be asked: that, and how many records are held for it; after a
        transient Kafka error with no records since: the error and when it came (librdkafka keeps retrying,
        and a quiet topic gives no sign that it succeeded).
        """
        if self._undecoded:
            return f"{self.last_error}; {len(self._undecoded)} records held until it answers"
        trouble = self._kafka_trouble
        if trouble is not None:
            at, error = trouble
            return f"Kafka said at {time.strftime('%H:%M:%S', time.gmtime(at))} UTC: {error.str()} (retrying; no records since)"
        return None

    def __iter__(self) -> Iterator[pd.DataFrame]:
        """Non-empty batches until :meth:`stop` is called or ``idle_timeout`` passes without records."""
        for batch in self._polls():
            if len(batch):
                yield batch

    def _polls(self) -> Iterator[pd.DataFrame]:
        """Every poll's batch, empty ones too, until :meth:`stop` or ``idle_timeout`` without records."""
        idle_since = time.monotonic()
        try:
            while not self._stopped.is_set():
                batch = self.poll()
                if len(batch):
                    idle_since = time.monotonic()
                elif self.idle_timeout is not None and time.monotonic() - idle_since >= self.idle_timeout:
                    return
                yield batch
        finally:
            self.close()

    def start(self, on_rows: Callable[[pd.DataFrame], None], on_error: Callable[[BaseException], None] | None = None,
              on_idle: Callable[[], None] | None = None) -> TopicTail:
        """Call ``on_rows(batch)`` for each batch in a background thread until :meth:`stop`.

        ``on_idle()``, if given, is called after each poll that gave no rows (at least every
        ``poll_timeout`` seconds while nothing arrives): a view can show :attr:`waiting` then.
        An exception (from Kafka, ``on_rows`` or ``on_idle``) ends the thread; it goes to ``on_error`` if
        given, else it is kept in ``self.failure``.
        """
        if self._thread is not None:
            raise RuntimeError(f"the tail of {self.topic!r} is already running in a thread")
        self.failure: BaseException | None = None

        def run() -> None:
            try:
                for batch in self._polls():
                    if len(batch):
                        on_rows(batch)
                    elif on_idle is not None:
                        on_idle()
            except BaseException as exc:  # handed to the caller: a thread has nowhere to raise to
                self.failure = exc
                if on_error is not None:
                    on_error(exc)

        self._thread = threading.Thread(target=run, name=f"tail-{self.topic}", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop iterating (within ``poll_timeout``) and close the consumer; joins the thread if started."""
        self._stopped.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise TimeoutError(f"the tail of {self.topic!r} did not stop within {timeout} s")
        self.close()

    def close(self) -> None:
        with self._lock:
            if self._consumer is not None:
                self._consumer.close()
                self._consumer = None

    @property
    def caught_up(self) -> bool:
        """Every partition has been read to its end once: later rows are records written since."""
        return not self._before_end

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def __enter__(self) -> TopicTail:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()


# --- reading -------------------------------------------------------------------------------------


# --- decoding ------------------------------------------------------------------------------------


class _RowBuilder:
    """Decodes records into column lists and builds the frame at the end."""

    def __init__(self, cluster: Cluster, topic: str, *, windowed: bool = False,
                 window_size: DurationLike | None = None, raise_errors: bool = False,
                 schemas: dict | None = None, describe_empty: bool = True):
        self.topic = topic
        self.registry = cluster.registry()
        self.registry_url = cluster.schema_registry_url
        self.windowed = windowed
        self.window_ms = duration_ms(window_size, "window_size") if window_size is not None else None
        if self.window_ms is not None and not windowed:
            raise ValueError("window_size only applies to windowed keys: pass windowed=True as well")
        self.raise_errors = raise_errors
        self.describe_empty = describe_empty  # an empty frame gets the registered schema's columns
        self.keys: list[str | None] = []
        self.window_starts: list[int] = []
        self.timestamps: list[int] = []
        self.partitions: list[int] = []
        self.offsets: list[int] = []
        self.headers: list[list | None] = []
        self.values: list[tuple | None] = []  # one tuple per record, in its schema's field order
        self.value_fields: list[tuple[str, ...]] = []  # the field names of each row's tuple
        self.errors: list[dict[str, Any]] = []
        # schema id -> (parsed schema, field names, is a record) or the error text; shareable between builders
        self._schemas: dict[int, tuple[Any, tuple[str, ...], bool] | str] = {} if schemas is None else schemas

    def add(self, messages: list[Message], start_ms: int | None = None, end_ms: int | None = None) -> None:
        reader = fastavro.schemaless_reader
        schemas = self._schemas
        for message in messages:
            timestamp = message.timestamp()[1]
            if (start_ms is not None and timestamp < start_ms) or (end_ms is not None and timestamp >= end_ms):
                continue
            raw_key = message.key()
            try:
                if self.windowed:
                    key, window_start = _split_windowed_key(raw_key)
                else:
                    key = raw_key.decode() if raw_key is not None else None
                value = message.value()
                if value is None:
                    fields, row = (), None
                else:
                    if len(value) < 5 or value[0] != 0:
                        raise ValueError("not in the Schema Registry wire format (magic byte 0, schema id, Avro)")
                    schema_id = int.from_bytes(value[1:5], "big")
                    schema = schemas.get(schema_id) or self._fetch_schema(schema_id)
                    if isinstance(schema, str):
                        raise ValueError(schema)
                    parsed, fields, is_record = schema
                    buffer = io.BytesIO(value)
                    buffer.seek(5)
                    decoded = reader(buffer, parsed, None)
                    row = tuple(decoded.values()) if is_record else (decoded,)
            except RegistryUnavailable:
                raise  # no record's fault: the caller waits for the registry or stops
            except Exception as exc:  # UnicodeDecodeError, Avro errors of several types, ValueError above
                self._failed(message, exc)
                continue
            if self.windowed:
                self.window_starts.append(window_start)
            self.keys.append(key)
            self.timestamps.append(timestamp)
            self.partitions.append(message.partition())
            self.offsets.append(message.offset())
            self.headers.append(message.headers())
            self.values.append(row)
            self.value_fields.append(fields)

    def _fetch_schema(self, schema_id: int) -> tuple[Any, tuple[str, ...], bool] | str:
        try:
            entry: Any = _parsed(fetch_schema(self.registry, schema_id, self.registry_url).schema_str)
        except RegistryUnavailable:
            raise  # not cached: the next try may find the registry answering
        except Exception as exc:  # no such id (UnknownSchemaId), or a schema fastavro cannot read
            entry = f"schema id {schema_id} is not usable from the registry: {exc}"
        self._schemas[schema_id] = entry
        return entry

    def _registered_fields(self) -> tuple[str, ...]:
        """The value columns of a frame without records: the fields of the topic's latest registered schema."""
        try:
            latest = self.registry.get_latest_version(f"{self.topic}-value")
            return _parsed(latest.schema.schema_str)[1]
        except Exception:  # no subject for this topic (or no registry): no value columns to show
            return ()

    def _failed(self, message: Message, exc: Exception) -> None:
        where = f"{self.topic}[{message.partition()}]@{message.offset()}"
        if self.raise_errors:
            raise MalformedRecord(f"record {where} cannot be decoded: {exc}") from exc
        self.errors.append({"topic": self.topic, "partition": message.partition(), "offset": message.offset(),
                            "timestamp_ms": message.timestamp()[1], "key": message.key(),
                            "error": f"{type(exc).__name__}: {exc}"})

    def frame(self, warn: bool) -> pd.DataFrame:
        columns: dict[str, Any] = {"key": self.keys}
        if self.windowed:
            starts = np.asarray(self.window_starts, dtype="int64")
            columns["window_start"] = _utc(starts)
            if self.window_ms is not None:
                columns["window_end"] = _utc(starts + self.window_ms)
        values = self._value_frame()
        for name in values.columns:
            columns[f"value_{name}" if name in METADATA_COLUMNS else name] = values[name].to_numpy()
        timestamps = np.asarray(self.timestamps, dtype="int64")
        columns["timestamp"] = _utc(timestamps)
        columns["timestamp_ms"] = timestamps
        columns["partition"] = np.asarray(self.partitions, dtype="int32")
        columns["offset"] = np.asarray(self.offsets, dtype="int64")
        headers = [_header_dict(h) if h else None for h in self.headers]
        columns["entry_id"] = [h.get(ENTRY_ID_HEADER) if h else None for h in headers]
        columns["headers"] = headers
        columns["tombstone"] = np.fromiter((row is None for row in self.values), dtype=bool, count=len(self.values))
        frame = pd.DataFrame(columns)
        if frame["partition"].nunique() > 1:
            frame = frame.sort_values(["partition", "offset"], kind="stable", ignore_index=True)
        frame.attrs["topic"] = self.topic
        frame.attrs["errors"] = self.errors
        frame.attrs["error_count"] = len(self.errors)
        if warn and self.errors:
            first = self.errors[0]
            warnings.warn(
                f"{len(self.errors)} record(s) of {self.topic!r} could not be decoded and are not in the frame "
                f"(first: partition {first['partition']} offset {first['offset']}: {first['error']}); "
                "see survey_kit.frames.errors_frame(frame)",
                stacklevel=3,
            )
        return frame

    def _value_frame(self) -> pd.DataFrame:
        schemas = {fields for fields in self.value_fields if fields}
        if not schemas and not self.errors and self.describe_empty:
            schemas = {self._registered_fields()} - {()}
        if len(schemas) <= 1:
            names = list(next(iter(schemas), ()))
            width = len(names)
            empty = (None,) * width
            rows = [row if row is not None else empty for row in self.values]
            return pd.DataFrame(rows, columns=names) if rows else pd.DataFrame(columns=names)
        # Several writer schemas (the schema evolved): one column per field name seen, in order of first use.
        return pd.DataFrame.from_records(
            [dict(zip(fields, row)) if row is not None else {} for fields, row in zip(self.value_fields, self.values)]
        )


def _parsed(schema_str: str) -> tuple[Any, tuple[str, ...], bool]:
    """A writer schema parsed for fastavro, with its field names (a non-record value is one column)."""
    parsed = fastavro.parse_schema(json.loads(schema_str))
    is_record = isinstance(parsed, dict) and parsed.get("type") == "record"
    fields = tuple(f["name"] for f in parsed["fields"]) if is_record else ("value",)
    return parsed, fields, is_record


def _split_windowed_key(raw: bytes | None) -> tuple[str, int]:
    """A Kafka Streams time-windowed key: the key's bytes, then the window start as 8 bytes big-endian."""
    if raw is None or len(raw) < 8:
        raise ValueError(f"a windowed key has at least 8 bytes (the window start); got {raw!r}")
    return raw[:-8].decode(), int.from_bytes(raw[-8:], "big", signed=True)


def _header_dict(headers: list[tuple[str, bytes | None]]) -> dict[str, Any]:
    decoded: dict[str, Any] = {}
    for name, value in headers:
        if value is not None:
            try:
                value = value.decode()
            except UnicodeDecodeError:
                pass  # binary headers stay bytes
        decoded[name] = value
    return decoded


def _utc(epoch_ms: np.ndarray) -> pd.DatetimeIndex:
    return pd.to_datetime(epoch_ms, unit="ms", utc=True)


def _epoch_ms(value: TimeLike, what: str) -> int:
    """Epoch milliseconds of a datetime, an ISO string (UTC unless it names a zone) or epoch ms."""
    if isinstance(value, bool):
        raise TypeError(f"{what} must be a datetime, an ISO date string or epoch milliseconds, not {value!r}")
    if isinstance(value, (int, np.integer)):
        return int(value)
    try:
        stamp = pd.Timestamp(value)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{what}={value!r} is not a time: give a datetime, an ISO string or epoch ms ({exc})") from None
    if stamp is pd.NaT:
        raise ValueError(f"{what} is not a time (NaT)")
    if stamp.tzinfo is None:
        stamp = stamp.tz_localize("UTC")
    return int(stamp.timestamp() * 1000)


def duration_ms(value: DurationLike, what: str, allow_zero: bool = False) -> int:
    """Milliseconds of a timedelta, a pandas duration string ("48h", "10min") or a number of ms."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        milliseconds = int(value)
    else:
        try:
            milliseconds = int(pd.Timedelta(value) / pd.Timedelta(milliseconds=1))
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{what}={value!r} is not a duration: give e.g. '48h', '10min' or a timedelta ({exc})") from None
    if milliseconds < 0 or (milliseconds == 0 and not allow_zero):
        raise ValueError(f"{what} must be {'zero or more' if allow_zero else 'positive'}, got {value!r}")
    return milliseconds
