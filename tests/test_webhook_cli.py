"""`golioth-sync webhooks list|replay|prune` through click, against the test database."""

from __future__ import annotations

import json
import re
import uuid
from datetime import timedelta

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from golioth_assets.cli.webhooks import parse_duration, parse_size, webhooks
from golioth_assets.store import webhook_events as inbox
from golioth_assets.webhooks.testing import make_webhook_service


@pytest.fixture
def dead_and_processed(engine, org) -> dict[str, int]:
    """Two dead events and one old processed event for this organization."""
    service = make_webhook_service(engine, org, signing_key_env="GOLIOTH_TEST_CLI_SECRET")
    events = [
        inbox.NewEvent(
            service,
            org,
            f"cli-{i}-{uuid.uuid4().hex[:6]}",
            "signed",
            "device.updated",
            f"dev-{i}",
            json.dumps({"i": i}),
        )
        for i in range(3)
    ]
    with engine.begin() as conn:
        inbox.store_events(conn, events)
        inbox.claim_pending(conn, limit=2, claimed_by=f"{org}/run", organization_id=org)
        inbox.release_failed(conn, f"{org}/run", "golioth unreachable", max_attempts=1)
        inbox.claim_pending(conn, limit=1, claimed_by=f"{org}/run2", organization_id=org)
        inbox.mark_processed(conn, f"{org}/run2")
        conn.execute(
            sa.text(
                "UPDATE webhook_events SET processed_at = now() - interval '10 days' "
                "WHERE organization_id = :org AND status = 'processed'"
            ),
            {"org": org},
        )
        ids = dict(
            conn.execute(
                sa.text("SELECT status, max(id) FROM webhook_events WHERE organization_id = :org GROUP BY status"),
                {"org": org},
            ).all()
        )
    return ids


def run(*args: str, width: int = 200):
    return CliRunner().invoke(webhooks, list(args), catch_exceptions=False, env={"COLUMNS": str(width)})


def counts(engine, org) -> dict[str, int]:
    with engine.connect() as conn:
        return {k: v for k, v in inbox.count_by_status(conn, org).items() if v}


def test_list_shows_dead_letters_of_one_org(db_env, org, dead_and_processed):
    result = run("list", "--status", "dead", "--org", org)
    assert result.exit_code == 0
    assert "golioth unreachable" in result.output
    assert str(dead_and_processed["dead"]) in result.output
    assert "dead: 2" in result.output
    assert "device.updated" in result.output


def test_replay_requeues_by_id_then_by_org(db_env, engine, org, dead_and_processed):
    assert "requeued 1 dead event(s)" in run("replay", "--id", str(dead_and_processed["dead"])).output
    assert counts(engine, org) == {"pending": 1, "dead": 1, "processed": 1}
    assert "requeued 1 dead event(s)" in run("replay", "--org", org).output
    assert counts(engine, org) == {"pending": 2, "processed": 1}


def test_list_keeps_ids_statuses_and_times_whole_at_80_columns(db_env, engine, org, dead_and_processed):
    error = "golioth unreachable: ConnectError [Errno 111] Connection refused while listing devices"
    with engine.begin() as conn:
        conn.execute(
            sa.text("UPDATE webhook_events SET last_error = :e WHERE organization_id = :org AND status = 'dead'"),
            {"org": org, "e": error},
        )
    lines = run("list", width=80).output.splitlines()
    assert max(map(len, lines)) <= 80
    dead = next(line for line in lines if line.startswith(f"{dead_and_processed['dead']} "))
    assert {"device.updated", "dead", "1"} <= set(dead.split())
    assert re.search(r" \d{4}-\d\d-\d\d \d\d:\d\d ", dead), dead
    # A list view shortens the error; all of it stays in webhook_events.last_error.
    assert f"{error[:39]}…" in run("list", "--org", org, width=250).output


def test_replay_of_an_id_that_is_not_dead_says_so(db_env, engine, org, dead_and_processed):
    missing = run("replay", "--id", "987654321")
    assert missing.exit_code == 1 and missing.output.strip() == "Error: no webhook event with id 987654321"
    alive = run("replay", "--id", str(dead_and_processed["processed"]), "--id", str(dead_and_processed["dead"]))
    assert alive.exit_code == 1
    assert f"event {dead_and_processed['processed']} is processed; nothing requeued" in alive.output
    assert counts(engine, org) == {"dead": 2, "processed": 1}  # all or nothing


def test_replay_without_a_selection_is_refused(db_env):
    result = CliRunner().invoke(webhooks, ["replay"])
    assert result.exit_code == 2
    assert "--id, --org or --all" in result.output


def test_prune_honours_the_retention(db_env, engine, org, dead_and_processed):
    assert "pruned 0" in run("prune", "--older-than", "30d").output
    assert counts(engine, org)["processed"] == 1
    run("prune", "--older-than", "7d")
    assert counts(engine, org) == {"dead": 2}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30m", timedelta(minutes=30)),
        ("7d", timedelta(days=7)),
        ("2w", timedelta(weeks=2)),
        ("45s", timedelta(seconds=45)),
    ],
)
def test_durations(text, expected):
    assert parse_duration(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"), [("1MiB", 1048576), ("512KiB", 524288), ("65536", 65536), ("2mb", 2000000)]
)
def test_sizes(text, expected):
    assert parse_size(text) == expected


def test_bad_duration_is_a_usage_error(db_env):
    result = CliRunner().invoke(webhooks, ["prune", "--older-than", "a week"])
    assert result.exit_code == 2
    assert "30m, 12h or 7d" in result.output
