"""The store against real PostgreSQL: migrations, bulk writes, compare-and-set, the embedded server."""

import uuid

import pandas as pd
import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from golioth_assets.store import assignments, database, embedded, inventory, migrate
from golioth_assets.store.local_table.connect import builtin_table
from golioth_assets.store.schema import metadata
from tests.fixtures.database import drop_database, fresh_database


def _device_frame(n: int, prefix: str = "d") -> pd.DataFrame:
    return pd.DataFrame(
        {
            "device_id": [str(uuid.uuid4()) for _ in range(n)],
            "name": [f"{prefix}-{i:05d}" for i in range(n)],
            "hardware_ids": [[f"hw-{prefix}-{i}"] for i in range(n)],
            "tags": [["a", "b"] if i % 2 else [] for i in range(n)],
            "blueprint": [None if i % 3 else "bp" for i in range(n)],
            "enabled": [bool(i % 5) for i in range(n)],
            "desired_state": [{"led": "on"} if i % 7 == 0 else {} for i in range(n)],
        }
    )


def test_migrations_run_up_from_empty_and_match_the_schema(db_url):
    url = fresh_database(db_url)
    try:
        engine = database.engine_for(url)
        assert migrate.current_revision(engine) is None
        assert migrate.upgrade(engine) == migrate.head_revision()
        with engine.connect() as conn:
            diff = compare_metadata(
                MigrationContext.configure(conn, opts={"compare_type": True, "version_table": migrate.VERSION_TABLE}),
                metadata,
            )
        assert diff == [], f"schema.py and the migrations disagree: {diff}"
        migrate.downgrade(engine, "base")
        with engine.connect() as conn:
            assert not sa.inspect(conn).has_table("devices")
        assert migrate.upgrade(engine) == migrate.head_revision()
        engine.dispose()
    finally:
        drop_database(url)


def test_bulk_insert_and_read_10k_devices(engine, org):
    frame = _device_frame(10_000)
    with engine.begin() as conn:
        table = builtin_table(conn, org)
        assert len(table.insert(conn, frame)) == 10_000
        # Idempotent: the same ids again insert nothing.
        assert table.insert(conn, frame.head(10)) == []
    with engine.connect() as conn:
        loaded = table.load(conn).set_index("device_id")
    assert len(loaded) == 10_000
    first = frame.iloc[7]
    row = loaded.loc[first["device_id"]]
    assert row["name"] == first["name"] and row["hardware_ids"] == first["hardware_ids"]
    assert row["desired_state"] == {"led": "on"} and len(row["fingerprint"]) == 32


def test_update_is_compare_and_set_on_the_fingerprint(engine, org):
    frame = _device_frame(2)
    a, b = frame["device_id"]
    with engine.begin() as conn:
        table = builtin_table(conn, org)
        table.insert(conn, frame)
        read = table.load(conn).set_index("device_id")["fingerprint"]
    # Someone edits b after the sync read it: its fingerprint moves.
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE devices SET name = 'edited' WHERE id = :id"), {"id": b})
    with engine.begin() as conn:
        done = table.update(
            conn,
            [
                {"device_id": a, "fingerprint": read[a], "name": "from-sync", "tags": ["x"]},
                {"device_id": b, "fingerprint": read[b], "name": "from-sync"},
            ],
        )
    assert done == [a]
    with engine.connect() as conn:
        rows = table.load(conn).set_index("device_id")
    assert rows.loc[a, "name"] == "from-sync" and rows.loc[a, "tags"] == ["x"]
    assert rows.loc[b, "name"] == "edited"  # the concurrent edit survives


def test_observed_updates_do_not_move_the_fingerprint(engine, org):
    frame = _device_frame(1)
    with engine.begin() as conn:
        table = builtin_table(conn, org)
        table.insert(conn, frame)
        before = table.load(conn).iloc[0]
        table.update_observed(
            conn,
            pd.DataFrame(
                {"device_id": frame["device_id"], "status": ["online"], "last_seen_online": ["2026-01-01T00:00:00Z"]}
            ),
        )
    with engine.connect() as conn:
        row = table.load(conn).iloc[0]
    assert row["status"] == "online" and row["fingerprint"] == before["fingerprint"]


def test_merge_bases_sets_fields_and_desired_keys(engine, org):
    from golioth_assets.store import services

    frame = _device_frame(1)
    with engine.begin() as conn:
        service = services.create_service(
            conn, services.ServiceSettings(organization_id=org, name=org, project_id="p", api_key_env="GOLIOTH_K")
        )
        builtin_table(conn, org).insert(conn, frame)
        d = frame["device_id"].item()
        assignments.insert_links(
            conn,
            service.id,
            [
                {
                    "device_id": d,
                    "golioth_device_id": "g1",
                    "base_snapshot": {"name": "old", "desired_state": {"a": 1, "b": 2}},
                }
            ],
        )
        assignments.merge_bases(
            conn,
            service.id,
            [
                {
                    "device_id": d,
                    "golioth_device_id": "g1",
                    "fields": {"name": "new"},
                    "desired_keys": {"a": None, "c": 3},
                }
            ],
        )
        base = assignments.load_links(conn, service.id)["base_snapshot"].item()
    assert base == {"name": "new", "desired_state": {"b": 2, "c": 3}}


def test_inventory_replace_and_targeted_upsert(engine, org):
    remote = pd.DataFrame(
        {
            "golioth_device_id": ["g1", "g2"],
            "name": ["one", "two"],
            "hardware_ids": [["h1"], ["h2"]],
            "tags": [["t"], []],
            "enabled": [True, False],
            "desired_state": [{"led": "on"}, {}],
        }
    )
    with engine.begin() as conn:
        assert inventory.replace_inventory(conn, org, remote) == 2
        assert inventory.upsert_inventory(conn, org, remote.head(1).assign(name="one-renamed")) == 1
        inventory.delete_inventory_rows(conn, org, ["g2"])
    with engine.connect() as conn:
        loaded = inventory.load_inventory(conn, org)
    assert list(loaded["name"]) == ["one-renamed"]
    assert loaded["desired_state"].item() == {"led": "on"}


def test_full_inventory_replace_rewrites_only_changed_rows_and_drops_absent_ones(engine, org):
    remote = pd.DataFrame(
        {
            "golioth_device_id": ["g1", "g2", "g3"],
            "name": ["one", "two", "three"],
            "hardware_ids": [["h1"], ["h2"], ["h3"]],
            "desired_state": [{"led": "on"}, {}, {}],
        }
    )
    versions = sa.text("SELECT golioth_device_id, xmin::text FROM golioth_inventory WHERE organization_id = :org")
    with engine.begin() as conn:
        assert inventory.replace_inventory(conn, org, remote) == 3
    with engine.connect() as conn:
        before = dict(conn.execute(versions, {"org": org}).all())
    fetched_again = remote[remote["golioth_device_id"] != "g3"].assign(
        desired_state=[{"led": "off"}, {}]  # g1 changed, g2 as stored, g3 gone
    )
    with engine.begin() as conn:
        assert inventory.replace_inventory(conn, org, fetched_again) == 1
    with engine.connect() as conn:
        after = dict(conn.execute(versions, {"org": org}).all())
        loaded = inventory.load_inventory(conn, org).set_index("golioth_device_id")
    assert set(after) == {"g1", "g2"}
    assert after["g2"] == before["g2"] and after["g1"] != before["g1"]
    assert loaded.at["g1", "desired_state"] == {"led": "off"} and loaded.at["g2", "name"] == "two"


def test_database_url_must_be_postgresql():
    with pytest.raises(database.DatabaseConfigError, match="PostgreSQL only"):
        database.normalize_url("sqlite:///x.db")
    with pytest.raises(database.DatabaseConfigError, match="not a valid database URL"):
        database.normalize_url("::not a url::")
    assert database.normalize_url("postgres://u@h/db").drivername == "postgresql+psycopg2"


@pytest.mark.embedded
def test_embedded_server_starts_on_demand_and_keeps_data_across_restarts(private_home):
    pgdata = private_home / "home" / "pgdata"
    url = embedded.start(pgdata).set(database="golioth_sync")
    try:
        database.ensure_database_exists(url)
        engine = database.engine_for(url)
        migrate.upgrade(engine)
        with engine.begin() as conn:
            conn.execute(sa.text("INSERT INTO organizations (id, name) VALUES ('kept', 'Kept')"))
        engine.dispose()
        assert embedded.stop(pgdata) and not embedded.is_running(pgdata)

        url = embedded.start(pgdata).set(database="golioth_sync")
        engine = database.engine_for(url)
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT name FROM organizations WHERE id = 'kept'")).scalar_one() == "Kept"
        engine.dispose()
    finally:
        embedded.stop(pgdata)


def test_a_pooled_connection_killed_while_idle_is_replaced_and_a_busy_one_is_not_pinged(db_url):
    """Issue 14: no ping on every checkout (store/database.py: ping_when_idle); a connection that
    idled in the pool is still pinged, and one the server ended meanwhile is replaced, not handed out."""
    pings: list[int] = []
    engine = database.ping_when_idle(sa.create_engine(db_url, pool_size=1, max_overflow=0), idle_seconds=0.0)
    real_ping = engine.dialect.do_ping
    engine.dialect.do_ping = lambda dbapi_conn: pings.append(1) or real_ping(dbapi_conn)  # type: ignore[method-assign]
    try:
        with engine.connect() as conn:
            first = conn.execute(sa.text("SELECT pg_backend_pid()")).scalar()
        with database.engine_for(db_url).connect() as other:
            assert other.execute(sa.text("SELECT pg_terminate_backend(:p)"), {"p": first}).scalar()
        with engine.connect() as conn:  # idle ≥ 0 s: pinged, found dead, replaced
            second = conn.execute(sa.text("SELECT pg_backend_pid()")).scalar()
        assert second != first and len(pings) == 1
        lazy = database.ping_when_idle(sa.create_engine(db_url, pool_size=1, max_overflow=0), idle_seconds=3600)
        lazy.dialect.do_ping = lambda dbapi_conn: pings.append(1) or real_ping(dbapi_conn)  # type: ignore[method-assign]
        for _ in range(3):
            with lazy.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
        assert len(pings) == 1  # handed back a moment ago: not pinged
        lazy.dispose()
    finally:
        engine.dispose()


def test_inventory_fingerprints_tell_apart_what_text_alone_would_not():
    frame = pd.DataFrame(
        {
            "golioth_device_id": ["g1", "g1", "g1", "g1", "g1"],
            "name": [None, "None", "n", "n", "n"],
            "hardware_ids": [["a,b"], ["a,b"], ["a", "b"], ["a,b"], ["a,b"]],
            "desired_state": [{}, {}, {}, {}, {"led": "on"}],
        }
    )
    prints = inventory.fingerprints(frame)
    assert len(set(prints)) == 5
    assert inventory.fingerprints(frame.copy()) == prints  # stable for equal values


def test_a_full_fetch_rewrites_a_row_that_a_targeted_fetch_changed_back(engine, org):
    """A targeted fetch stores newer values (and their fingerprint); a later full fetch that sees
    the old values again must rewrite the row, not take it for unchanged."""
    first = pd.DataFrame({"golioth_device_id": ["g1"], "name": ["one"], "hardware_ids": [["h1"]]})
    with engine.begin() as conn:
        inventory.replace_inventory(conn, org, first)
        inventory.upsert_inventory(conn, org, first.assign(name="renamed"))
        assert inventory.replace_inventory(conn, org, first) == 1
    with engine.connect() as conn:
        assert inventory.load_inventory(conn, org)["name"].tolist() == ["one"]


def test_references_replaced_in_place_renamed_removed_and_unchanged_left_alone(engine, org):
    refs = pd.DataFrame(
        {"kind": ["tag", "tag", "blueprint"], "golioth_id": ["t1", "t2", "b1"], "name": ["a", "b", "bp"]}
    )
    versions = sa.text("SELECT golioth_id, xmin::text FROM golioth_references WHERE organization_id = :org")
    with engine.begin() as conn:
        inventory.replace_references(conn, org, refs)
    with engine.connect() as conn:
        before = dict(conn.execute(versions, {"org": org}).all())
    renamed = pd.DataFrame({"kind": ["tag", "blueprint"], "golioth_id": ["t1", "b1"], "name": ["a2", "bp"]})
    with engine.begin() as conn:
        inventory.replace_references(conn, org, renamed)
    with engine.connect() as conn:
        after = dict(conn.execute(versions, {"org": org}).all())
        stored = inventory.load_references(conn, org).sort_values("golioth_id").values.tolist()
    assert stored == [["blueprint", "b1", "bp"], ["tag", "t1", "a2"]]
    assert after["b1"] == before["b1"] and after["t1"] != before["t1"]
    with engine.begin() as conn:
        inventory.replace_references(conn, org, renamed.iloc[:0])
    with engine.connect() as conn:
        assert inventory.load_references(conn, org).empty


def test_a_lookup_by_a_hundred_hardware_ids_uses_the_gin_index(engine, org):
    """The convergence check pairs devices by hardware id: with ~100 ids the planner used to scan
    the whole table (it estimated a third of it per lookup). The statement as sent is explained."""
    frame = _device_frame(5_000)
    sent: list[tuple[str, dict]] = []

    def capture(conn, cursor, statement, parameters, context, executemany) -> None:
        if "hardware_ids" in statement and "&&" in statement:
            sent.append((statement, parameters))

    with engine.begin() as conn:
        table = builtin_table(conn, org)
        table.insert(conn, frame)
        conn.exec_driver_sql("ANALYZE devices")
    wanted = frame["hardware_ids"].str[0].tolist()[::50]  # 100 of them
    sa.event.listen(engine, "before_cursor_execute", capture)
    try:
        with engine.connect() as conn:
            found = table.find_by_hardware_ids(conn, wanted)
    finally:
        sa.event.remove(engine, "before_cursor_execute", capture)
    assert sorted(found) == sorted(frame["device_id"].tolist()[::50])
    [(statement, parameters)] = sent
    with engine.connect() as conn:
        plan = "\n".join(r[0] for r in conn.exec_driver_sql("EXPLAIN " + statement, parameters))
    assert "ix_devices_hardware_ids" in plan, plan
