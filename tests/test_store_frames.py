"""store/frames.py against real PostgreSQL: `read_rows` builds the frame `bulk.read_frame` builds
(same values, same dtypes), with JSON columns read as text and NULL timestamps as NaT."""

import pandas as pd
import pytest

from golioth_assets.store.bulk import read_frame
from golioth_assets.store.frames import read_rows, timestamp_micros
from golioth_assets.store.local_table.sql import EPOCH_MICROS

VALUES = """
    (VALUES
        ('a', 'name-a', ARRAY['hw-1', 'hw-2'], true, '{"led": "on", "n": [1, 2]}'::jsonb, now(), NULL::timestamptz),
        ('b', NULL, ARRAY[]::text[], false, '[1, "x"]'::jsonb, NULL, '2026-01-02 03:04:05.123456+00'),
        ('c', 'name-ç', ARRAY['hw-3'], true, NULL, '1970-01-01 00:00:00+00', now()),
        ('d', 'name-d', ARRAY['hw-4', 'hw-5'], true, '{}'::jsonb, now(), now())
    ) AS v(id, name, hw, enabled, doc, seen, gone)
"""
COLUMNS = ["id", "name", "hw", "enabled", "doc", "seen", "gone"]


def _old(conn, where: str) -> pd.DataFrame:
    sql = (
        f"SELECT id, name, hw, enabled, doc, {EPOCH_MICROS.format('seen')}, {EPOCH_MICROS.format('gone')} "
        f"FROM {VALUES} WHERE {where} ORDER BY id"
    )
    return read_frame(conn, sql, {}, COLUMNS, ("seen", "gone"))


def _new(conn, where: str) -> pd.DataFrame:
    seen, gone = (timestamp_micros(EPOCH_MICROS.format(c)) for c in ("seen", "gone"))
    sql = f"SELECT id, name, hw, enabled, doc::text, {seen}, {gone} FROM {VALUES} WHERE {where} ORDER BY id"
    return read_rows(conn, sql, {}, COLUMNS, timestamps=("seen", "gone"), json_text=("doc",))


@pytest.mark.parametrize("where", ["true", "id = 'a'", "id IN ('a', 'd')", "false"])
def test_read_rows_builds_the_frame_read_frame_builds(engine, where):
    with engine.connect() as conn:
        old, new = _old(conn, where), _new(conn, where)
    pd.testing.assert_frame_equal(new, old)
    if where == "true":
        assert new["doc"].tolist()[:2] == [{"led": "on", "n": [1, 2]}, [1, "x"]]  # a list stays one value
        assert new["doc"].iloc[2] is None and pd.isna(new["gone"].iloc[0])
        assert new["gone"].iloc[1] == pd.Timestamp("2026-01-02 03:04:05.123456", tz="UTC")  # to the µs


def test_json_columns_are_parsed_in_chunks_without_moving_a_value(engine, monkeypatch):
    """A column's JSON is parsed a chunk of rows at a time (no whole column's text at once, the
    100k-device memory peak): chunks of 3 over these 4 rows give the same frame as one chunk."""
    with engine.connect() as conn:
        whole = _new(conn, "true")
        monkeypatch.setattr("golioth_assets.store.frames._PARSE_CHUNK", 3)
        chunked = _new(conn, "true")
    pd.testing.assert_frame_equal(chunked, whole)
    assert chunked["doc"].iloc[3] == {} and chunked["doc"].iloc[2] is None  # rows 3 and 4 crossed the cut
