"""Bulk reads and set-based bulk writes: a whole batch reaches PostgreSQL in one COPY, never a
round trip per row; a whole organization comes back in one query.

Rows are serialized to JSON lines and COPYed into a temporary table of one jsonb column. The caller
then runs one INSERT … SELECT or UPDATE … FROM that unpacks them (`jsonb_to_record` also turns JSON
arrays into `text[]`), so typing and conflict handling stay in SQL where they are easy to read.
"""

from __future__ import annotations

import io
import itertools
import json
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd
import psycopg2.extensions
from sqlalchemy.engine import Connection

_counter = itertools.count()
STAGE_CHUNK_ROWS = 5_000  # rows serialized at a time: memory stays flat however large the frame


class _ChunkReader(io.RawIOBase):
    """A binary file over an iterator of text chunks, for COPY FROM STDIN: only one chunk is held
    at a time. (`io.StringIO(text)` would hold the whole text again, at 4 bytes a character.)"""

    def __init__(self, chunks: Iterable[str], encoding: str) -> None:
        self._chunks = iter(chunks)
        self._encoding = encoding
        self._buffer = memoryview(b"")
        self._at = 0

    def readable(self) -> bool:
        return True

    def readinto(self, target) -> int:
        while self._at >= len(self._buffer):
            chunk = next(self._chunks, None)
            if chunk is None:
                return 0
            self._buffer, self._at = memoryview(chunk.encode(self._encoding)), 0
        n = min(len(target), len(self._buffer) - self._at)
        target[:n] = self._buffer[self._at : self._at + n]
        self._at += n
        return n


def _copy_lines(conn: Connection, chunks: Iterable[str]) -> str:
    """COPY JSON lines (given as chunks of whole lines, each ending with a newline, or one string)
    into a new temp table `(doc jsonb)`; return its name."""
    name = f"_stage_{next(_counter)}"
    conn.exec_driver_sql(f"CREATE TEMP TABLE {name} (doc jsonb) ON COMMIT DROP")
    # The psycopg2 connection under SQLAlchemy (its DBAPI protocol knows neither encodings nor COPY).
    raw: psycopg2.extensions.connection = conn.connection.dbapi_connection
    encoding = psycopg2.extensions.encodings.get(raw.encoding, "utf-8")  # bytes, in the client encoding
    with raw.cursor() as cursor:
        # CSV with control characters as quote and delimiter: nothing in JSON text is interpreted.
        cursor.copy_expert(
            f"COPY {name} (doc) FROM STDIN WITH (FORMAT csv, QUOTE e'\\x01', DELIMITER e'\\x02')",
            io.BufferedReader(_ChunkReader([chunks] if isinstance(chunks, str) else chunks, encoding), 1 << 16),
        )
    return name


def stage(conn: Connection, frame: pd.DataFrame) -> str:
    """COPY a frame (pandas serializes it in C, a chunk of rows at a time) into a temp table
    `(doc jsonb)`; return its name."""

    def chunks():
        for start in range(0, len(frame), STAGE_CHUNK_ROWS):
            part = _iso_utc(frame.iloc[start : start + STAGE_CHUNK_ROWS])
            text = part.to_json(orient="records", lines=True, date_format="iso", date_unit="us", force_ascii=False)
            yield text if text.endswith("\n") else text + "\n"

    return _copy_lines(conn, chunks())


INLINE_MAX_ROWS = 1_000
INLINE_SOURCE = "jsonb_array_elements(CAST(%(staged)s AS jsonb)) AS s(doc)"


def source(conn: Connection, rows: pd.DataFrame | Sequence[dict]) -> tuple[str, dict]:
    """A FROM item `s(doc jsonb)` holding the rows (a frame, or plain dicts), and the parameters
    it needs. A few rows (a webhook batch, say) go inline as one JSON array parameter: no temp
    table to create and drop, so the whole write is one statement. More are COPYed (`stage`)."""
    frame = isinstance(rows, pd.DataFrame)
    if len(rows) > INLINE_MAX_ROWS:
        return f"{stage(conn, rows) if frame else stage_records(conn, rows)} s", {}  # type: ignore[arg-type]
    if frame:
        text = _iso_utc(rows).to_json(orient="records", date_format="iso", date_unit="us", force_ascii=False)  # type: ignore[union-attr]
    else:
        text = json.dumps([{k: _plain(v) for k, v in r.items()} for r in rows], default=str, ensure_ascii=False)
    return INLINE_SOURCE, {"staged": text}


def _iso_utc(part: pd.DataFrame) -> pd.DataFrame:
    """Timezone-aware timestamp columns as ISO strings ("…Z", as to_json writes them), made by numpy
    in one vectorized call: to_json formats timestamps one by one, several times slower."""
    aware = [c for c, t in part.dtypes.items() if isinstance(t, pd.DatetimeTZDtype)]
    if not aware:
        return part
    converted = {}
    for column in aware:
        values = part[column].dt.tz_convert("UTC").dt.tz_localize(None).to_numpy("datetime64[us]")
        text = np.char.add(np.datetime_as_string(values, unit="us"), "Z").astype(object)
        text[np.isnat(values)] = None
        converted[column] = text
    return part.assign(**converted)


def _plain(value):
    # pandas hands out NaN/NaT/NA for missing values; JSON has only null.
    if value is None or isinstance(value, (list, dict, str, bool)):
        return value
    return None if pd.isna(value) else value


def stage_records(conn: Connection, records: Iterable[dict]) -> str:
    """Like `stage`, for records whose keys vary (a missing key means "leave this column alone")."""
    lines = (json.dumps({k: _plain(v) for k, v in r.items()}, default=str, ensure_ascii=False) + "\n" for r in records)
    return _copy_lines(conn, lines)


def read_frame(
    conn: Connection, sql: str, params: dict, columns: list[str], timestamps: tuple[str, ...] = ()
) -> pd.DataFrame:
    """Run a query into a DataFrame. Timestamp columns must be selected as integer epoch
    microseconds (`(extract(epoch FROM col) * 1000000)::bigint`): integers convert to datetimes in
    one vectorized step, where driver-made datetime objects would be converted one by one (and
    float seconds would lose the last microsecond)."""
    rows = [tuple(r) for r in conn.exec_driver_sql(sql, params).fetchall()]
    frame = pd.DataFrame.from_records(rows, columns=columns)
    for column in timestamps:
        micros = pd.to_numeric(frame[column]).to_numpy(dtype="float64")  # exact: µs since 1970 < 2**53
        missing = np.isnan(micros)
        stamps = np.where(missing, 0, micros).astype("int64").astype("datetime64[us]").astype("datetime64[ns]")
        stamps[missing] = np.datetime64("NaT")
        frame[column] = pd.Series(stamps, index=frame.index).dt.tz_localize("UTC")
    return frame
