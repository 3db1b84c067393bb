"""The Dagster UI for real: dagster-webserver on this project's workspace.yaml and dagster.yaml
(PostgreSQL storage, a DAGSTER_HOME from `golioth-sync`'s runtime.prepare()), one completed sync of
a small simulated fleet, loaded in headless Chromium through Playwright.

Needs Debian's `chromium` (/usr/bin/chromium) and the `playwright` Python package; Playwright never
downloads a browser here, it drives the system one. Screenshots go to $GOLIOTH_SYNC_SCREENSHOT_DIR
(the docs use docs/screenshots/) or to the test's temporary folder, so a test run leaves the tree alone.
"""

import os
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
    completed full sync of a 25-device simulated organization in its run history."""
    from golioth_assets.cli.runtime import prepare

    h = make_harness(devices=25)
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


def test_asset_graph_and_run_page_render(webserver, page, tmp_path):
    SCREENSHOTS = Path(os.environ.get("GOLIOTH_SYNC_SCREENSHOT_DIR") or tmp_path)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    url, run_id, org = webserver["url"], webserver["run_id"], webserver["org"]

    # The lineage of the golioth_sync group: all six assets, drawn as a graph.
    page.goto(f"{url}/locations/golioth_sync/asset-groups/golioth_sync/lineage")
    _wait_for_texts(page, ASSETS)
    _dismiss_onboarding(page)
    page.wait_for_timeout(1500)  # let the graph settle (layout, edges) before the screenshot
    edges = page.locator("svg path").count()
    assert edges >= 5, f"expected the lineage edges to be drawn, found {edges} paths"
    page.screenshot(path=str(SCREENSHOTS / "dagster-asset-graph.png"))

    # The run page of the completed sync: its status and its steps.
    page.goto(f"{url}/runs/{run_id}")
    page.get_by_text("Success", exact=True).first.wait_for(state="visible")
    _dismiss_onboarding(page)
    body = page.inner_text("body")
    assert run_id[:8] in body
    assert sum(name in body for name in ASSETS) >= 3, body[:2000]
    assert "RUN_SUCCESS" in body or "Finished execution" in body or "Success" in body
    page.wait_for_timeout(1000)
    page.screenshot(path=str(SCREENSHOTS / "dagster-run.png"))

    # The run list filters by the organization tag.
    page.goto(f"{url}/runs?q%5B0%5D=tag%3A{RunTag.org}%3D{org}")
    page.get_by_text(run_id[:8]).first.wait_for(state="visible")
    assert org in page.inner_text("body")
