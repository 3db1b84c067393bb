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
from collections.abc import Iterable

import numpy as np
import pandas as pd
from sqlalchemy.engine import Connection

_counter = itertools.count()


def _copy_lines(conn: Connection, lines: str) -> str:
    name = f"_stage_{next(_counter)}"
    conn.exec_driver_sql(f"CREATE TEMP TABLE {name} (doc jsonb) ON COMMIT DROP")
    if lines:
        raw = conn.connection.dbapi_connection  # the psycopg2 connection under SQLAlchemy
        with raw.cursor() as cursor:
            # CSV with control characters as quote and delimiter: nothing in JSON text is interpreted.
            cursor.copy_expert(
                f"COPY {name} (doc) FROM STDIN WITH (FORMAT csv, QUOTE e'\\x01', DELIMITER e'\\x02')",
                io.StringIO(lines),
            )
    return name


def stage(conn: Connection, frame: pd.DataFrame) -> str:
    """COPY a frame (pandas serializes it in C) into a temp table `(doc jsonb)`; return its name."""
    if frame.empty:
        return _copy_lines(conn, "")
    return _copy_lines(
        conn, frame.to_json(orient="records", lines=True, date_format="iso", date_unit="us", force_ascii=False)
    )


def _plain(value):
    # pandas hands out NaN/NaT/NA for missing values; JSON has only null.
    if value is None or isinstance(value, (list, dict, str, bool)):
        return value
    return None if pd.isna(value) else value


def stage_records(conn: Connection, records: Iterable[dict]) -> str:
    """Like `stage`, for records whose keys vary (a missing key means "leave this column alone")."""
    lines = (json.dumps({k: _plain(v) for k, v in r.items()}, default=str, ensure_ascii=False) for r in records)
    return _copy_lines(conn, "\n".join(lines))


def read_frame(conn: Connection, sql: str, params: dict, columns: list[str], timestamps: tuple[str, ...] = ()) -> pd.DataFrame:
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
