"""The Dagster UI for real: dagster-webserver on this project's workspace.yaml and dagster.yaml
(PostgreSQL storage, a DAGSTER_HOME from `golioth-sync`'s runtime.prepare()), one completed sync of
a small simulated fleet, loaded in headless Chromium through Playwright.

Needs Debian's `chromium` (/usr/bin/chromium) and the `playwright` Python package; Playwright never
downloads a browser here, it drives the system one. Screenshots go to $GOLIOTH_SYNC_SCREENSHOT_DIR
(the docs use docs/screenshots/) or to the test's temporary folder, so a test run leaves the tree alone.
"""

import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import dagster as dg
import httpx
import pytest

from golioth_assets.cli.runtime import DAGSTER_PG_ENV, PROJECT_ROOT, WORKSPACE_YAML
from golioth_assets.core.vocabulary import RunTag
from golioth_assets.defs.assets import sync_assets
from golioth_assets.defs.jobs import full_sync_job, run_tags
from golioth_assets.defs.partitions import organizations
from golioth_assets.defs.resources import DeviceStore, GoliothApi
from tests.fixtures.changes import EXPECTED_SUMMARIES, edit_both_sides
from tests.fixtures.database import drop_database
from tests.fixtures.network import free_port

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = Path(os.environ.get("GOLIOTH_SYNC_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ASSETS = [key.to_user_string() for a in sync_assets for key in a.keys]

if not CHROMIUM.exists():
    pytest.skip(
        f"no Chromium at {CHROMIUM}: `apt-get install -y chromium` (Debian) to run the UI test", allow_module_level=True
    )
sync_playwright = pytest.importorskip(
    "playwright.sync_api", reason="the UI test needs `pip install playwright` (no browser download)"
).sync_playwright


def _wait_http(url: str, proc: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"dagster-webserver exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"{url} did not answer within {timeout_s:.0f} s")


def _stop(proc: subprocess.Popen) -> None:
    """Stop the webserver and its code server (its own process group), politely first."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


@pytest.fixture
def webserver(make_harness, db_url, tmp_path, monkeypatch):
    """dagster-webserver over a DAGSTER_HOME prepared like `golioth-sync dev` does, with one
    completed full sync of a 25-device simulated organization in its run history, and no run in
    flight. The organization was synced once before (outside Dagster) and then edited on both
    sides, so that the run's summaries have something to say (tests/fixtures/changes.py)."""
    from golioth_assets.cli.runtime import prepare

    h = make_harness(devices=25)
    edit_both_sides(h)
    dagster_url = db_url.set(database=f"gs_ui_{uuid.uuid4().hex[:10]}")
    # monkeypatch first, so that whatever prepare() writes to os.environ is undone afterwards.
    monkeypatch.setenv("GOLIOTH_SYNC_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DATABASE_URL", db_url.render_as_string(hide_password=False))
    monkeypatch.setenv("DAGSTER_DATABASE_URL", dagster_url.render_as_string(hide_password=False))
    monkeypatch.setenv("DAGSTER_HOME", "unset")
    monkeypatch.setenv(DAGSTER_PG_ENV, "unset")
    runtime = prepare()
    proc = None
    try:
        with dg.DagsterInstance.get() as instance:
            instance.add_dynamic_partitions(organizations.name, [h.org])
            job = dg.Definitions(
                assets=sync_assets,
                jobs=[full_sync_job],
                resources={"store": DeviceStore(database_url=os.environ["DATABASE_URL"]), "golioth": GoliothApi()},
            ).resolve_job_def(full_sync_job.name)
            result = job.execute_in_process(instance=instance, partition_key=h.org, tags=run_tags(h.org, "ui-test"))
            assert result.success
            in_flight = dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED])
            assert instance.get_runs_count(in_flight) == 0
        port = free_port()
        log = open(tmp_path / "webserver.log", "wb")  # noqa: SIM115 - closed below
        proc = subprocess.Popen(
            [
                str(Path(sys.executable).with_name("dagster-webserver")),
                "-w",
                str(WORKSPACE_YAML),
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
            ],
            cwd=PROJECT_ROOT,
            env=dict(os.environ),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        url = f"http://127.0.0.1:{port}"
        _wait_http(f"{url}/server_info", proc, 180)
        yield {"url": url, "run_id": result.run_id, "org": h.org, "home": runtime.dagster_home}
    finally:
        if proc is not None:
            _stop(proc)
            log.close()
        drop_database(dagster_url)


@pytest.fixture
def page():
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            page.set_default_timeout(90_000)
            yield page
        finally:
            browser.close()


def _wait_for_texts(page, texts: list[str]) -> None:
    for text in texts:
        page.get_by_text(text, exact=True).first.wait_for(state="visible")


def _dismiss_onboarding(page) -> None:
    """A fresh browser profile gets Dagster's "Join the Dagster community" dialog once: skip it."""
    skip = page.get_by_role("button", name="Skip", exact=True)
    try:
        skip.wait_for(state="visible", timeout=5_000)
    except Exception:
        return
    skip.click()
    skip.wait_for(state="hidden")


def _screenshot_dir(tmp_path) -> Path:
    folder = Path(os.environ.get("GOLIOTH_SYNC_SCREENSHOT_DIR") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _count(page, text: str) -> int:
    return page.get_by_text(text, exact=True).count()


def test_after_a_sync_the_ui_shows_every_asset_materialized_with_what_it_changed(webserver, page, tmp_path):
    screenshots = Path(os.environ.get("GOLIOTH_SYNC_SCREENSHOT_DIR") or tmp_path)
    screenshots.mkdir(parents=True, exist_ok=True)
    url, run_id, org = webserver["url"], webserver["run_id"], webserver["org"]
    _lineage(page, url, screenshots)
    _catalog(page, url, screenshots)
    _partitions(page, url, org, screenshots)
    _run_page_and_run_list(page, url, run_id, org, screenshots)


def _count(page, text: str) -> int:
    return page.get_by_text(text, exact=True).count()


def _lineage(page, url: str, screenshots: Path) -> None:
    """Six nodes, each with its one partition materialized ("100% filled", the status row green
    with "1 partition") and nothing in progress; a node leads to its latest summary."""
    page.goto(f"{url}/locations/golioth_sync/asset-groups/golioth_sync/lineage")
    _wait_for_texts(page, ASSETS)
    _dismiss_onboarding(page)
    page.get_by_text("100% filled", exact=True).nth(len(ASSETS) - 1).wait_for(state="visible")
    assert _count(page, "100% filled") == len(ASSETS)
    assert _count(page, "1 partition") == len(ASSETS)
    body = page.inner_text("body")
    for unwanted in ("Materializing", "Never materialized", "Failed", "Loading..."):
        assert unwanted not in body, f"the lineage says {unwanted!r}"
    assert page.locator("svg path").count() >= 5, "the lineage edges are not drawn"
    page.wait_for_timeout(1000)  # let the layout settle before the screenshot
    page.screenshot(path=str(screenshots / "dagster-asset-graph.png"))

    # Select a node, then "View in Asset Catalog": the asset's latest materialization, with the
    # summary as the first row of its metadata.
    page.get_by_text("device_reconciliation", exact=True).first.click()
    page.get_by_text("View in Asset Catalog").first.click()
    page.get_by_text(EXPECTED_SUMMARIES["device_reconciliation"], exact=True).first.wait_for(state="visible")
    assert "Latest materialization" in page.inner_text("body")


def _catalog(page, url: str, screenshots: Path) -> None:
    """Per asset, its partitions by status in the order materialized, missing, failed, in
    progress: "All 0 0 0" is every partition materialized and none running."""
    page.goto(f"{url}/assets")
    _wait_for_texts(page, ASSETS)
    page.get_by_text("1 partition", exact=True).nth(len(ASSETS) - 1).wait_for(state="visible")
    rows = {}
    for chunk in page.inner_text("body").split("1 partition")[:-1]:  # each row ends with its count
        lines = [line.strip() for line in chunk.strip().splitlines() if line.strip()]
        rows[next(line for line in lines if line in ASSETS)] = lines
    assert sorted(rows) == sorted(ASSETS)
    for asset, lines in rows.items():
        assert lines[-4:] == ["All", "0", "0", "0"], (asset, lines[-6:])
    page.wait_for_timeout(500)
    page.screenshot(path=str(screenshots / "dagster-catalog.png"))


def _partitions(page, url: str, org: str, screenshots: Path) -> None:
    """Each asset's partition (the organization): "Materialized", and the one-line summary of
    what its latest materialization changed."""
    for asset in ASSETS:
        page.goto(f"{url}/assets/{asset}?view=partitions&partition={org}")
        page.get_by_text("Materialized", exact=True).first.wait_for(state="visible")
        page.get_by_text(re.compile("^" + re.escape(EXPECTED_SUMMARIES[asset]))).first.wait_for(state="visible")
        if asset == "device_reconciliation":
            page.screenshot(path=str(screenshots / "dagster-asset-summary.png"))


def _run_page_and_run_list(page, url: str, run_id: str, org: str, screenshots: Path) -> None:
    page.goto(f"{url}/runs/{run_id}")
    page.get_by_text("Success", exact=True).first.wait_for(state="visible")
    page.get_by_text(re.compile("^Materialized value ")).first.wait_for(state="visible")  # the event log
    body = page.inner_text("body")
    assert run_id[:8] in body
    assert sum(name in body for name in ASSETS) >= 3, body[:2000]
    page.wait_for_timeout(1000)
    page.screenshot(path=str(screenshots / "dagster-run.png"))

    # The run list filters by the organization, which is the partition tag. A row shows only the
    # tags operators filter by; Dagster's own (dagster/run_key, ...) stay behind "View all tags".
    page.goto(f"{url}/runs?q%5B0%5D=tag%3A{RunTag.org}%3D{org}")
    page.get_by_text(run_id[:8]).first.wait_for(state="visible")
    listed = page.inner_text("body")
    for shown in (f"partition: {org}", f"{RunTag.trigger}: ui-test", f"{RunTag.kind}: full"):
        assert shown in listed, (shown, listed)
    assert "golioth-sync/org" not in listed and "golioth-sync/host" not in listed, listed
