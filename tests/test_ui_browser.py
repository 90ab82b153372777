"""The Dagster UI in a real browser: dagster-webserver on 127.0.0.1 over this project's workspace, driven by
headless Debian Chromium through Playwright. Opens the datagen asset graph, launches one partition of
filtered_events from the asset page's Materialize dialog, waits for the run, then reads the partition's
monitoring metadata (filter-chain loss table) and its asset check result on the pages. Screenshots are written to
docs/screenshots/ (the ones committed there come from this test).

Needs /usr/bin/chromium (`apt-get install chromium`, done by .ci/run) and the `playwright` Python package (its
driver only: the browser is Debian's, nothing is downloaded).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from dagster import DagsterInstance, DagsterRunStatus

from tests.helpers import REPO, file_size, free_port, stop_process_tree, tail, wait_until

SHOTS = REPO / "docs" / "screenshots"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Debian Chromium as root in a closed network: no sandbox, no background connections (see the machine notes).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]
DAY = "2024-03-01"

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _chromium_present():
    # Not a skip: a suite that passes without its browser test hides a hole. `.ci/run` installs it.
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"the UI test needs Debian's Chromium at {CHROMIUM}: `apt-get install chromium` (.ci/run does)")


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def _wait_http(url: str, proc: subprocess.Popen, log: Path) -> None:
    """Up when it answers; the wait follows the webserver's log (loading the code location) and fails at once if
    it exits."""
    wait_until(
        lambda: _http_ok(url),
        lambda: file_size(log),
        f"{url} to answer",
        stall_s=180,
        limit_s=900,
        failed=lambda: None if proc.poll() is None else f"dagster-webserver exited ({proc.returncode})",
        context=lambda: tail(log),
    )


@pytest.fixture()
def webserver(data_root, tmp_path):
    home = tmp_path / "dagster_home"
    home.mkdir()
    # Runs launch immediately in a subprocess (no daemon), so no sensor or schedule starts extra runs in the test.
    (home / "dagster.yaml").write_text(
        "telemetry:\n  enabled: false\n"
        "run_coordinator:\n  module: dagster.core.run_coordinator\n  class: DefaultRunCoordinator\n"
    )
    port = free_port()
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "RECSYS_DATA_ROOT": str(data_root),
        "RECSYS_SPARK_MASTER": "local[2]",
        "RECSYS_SPARK_BACKEND": "local",
    }
    log = tmp_path / "webserver.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "dagster-webserver"),
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
                "-w",
                str(REPO / "workspace.yaml"),
            ],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_http(f"http://127.0.0.1:{port}/server_info", proc, log)
        yield f"http://127.0.0.1:{port}", home
    finally:
        stop_process_tree(proc)  # the webserver and the code server it started


def _dismiss_community_modal(page) -> None:
    """The community sign-up modal is pre-dismissed by the init script; click Skip if a UI version still shows it."""
    skip = page.get_by_role("button", name="Skip")
    if skip.count():
        skip.click()
        page.get_by_text("Join the Dagster community").wait_for(state="hidden")


def _wait_for_run(home: Path):
    """The launched run's end, waiting as long as its event log grows (a slow host), not a fixed budget."""
    finished = (DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED)
    with DagsterInstance.from_config(str(home)) as instance:

        def done():
            runs = instance.get_runs()
            return runs if runs and runs[0].status in finished else None

        def progress():
            runs = instance.get_runs()
            return [(r.status, len(instance.get_records_for_run(r.run_id, limit=10_000).records)) for r in runs]

        return wait_until(done, progress, "the run launched from the UI to finish", stall_s=300, limit_s=2400)


def test_materialize_a_partition_from_the_ui_and_see_checks_and_metadata(webserver):
    from playwright.sync_api import expect, sync_playwright

    base, home = webserver
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        # What the UI stores when a user dismisses its community sign-up modal (useStateWithStorage('communityNux')).
        page.add_init_script("window.localStorage.setItem('communityNux', JSON.stringify('1'))")
        page.set_default_timeout(60_000)

        # 1. The datagen asset graph, with the downstream training/serving assets it feeds.
        page.goto(f"{base}/locations/recsys_platform/asset-groups/datagen")
        _dismiss_community_modal(page)
        for name in ("filtered_events", "training_events", "datagen_monitoring_report", "feed"):
            expect(page.get_by_text(name, exact=True).first).to_be_visible()
        page.screenshot(path=str(SHOTS / "01_datagen_asset_graph.png"))

        # 2. Launch one partition from the asset page's Materialize dialog.
        page.goto(f"{base}/assets/filtered_events")
        _dismiss_community_modal(page)
        page.get_by_role("button", name="Materialize…").click()
        dialog = page.get_by_role("dialog")
        dialog.get_by_text("Show all partitions").click()
        expect(dialog.get_by_text("All time").first).to_be_visible()  # the range re-renders the partition input
        partition_input = dialog.get_by_placeholder("ex: 2024-01-01", exact=False)
        launch = dialog.get_by_role("button", name="Launch 1 run")
        for _ in range(5):
            partition_input.fill(DAY)
            partition_input.press("Enter")
            try:
                expect(launch).to_be_enabled(timeout=5_000)
                break
            except AssertionError:
                continue
        expect(launch).to_be_enabled()
        page.screenshot(path=str(SHOTS / "02_launch_partition.png"))
        launch.click()

        runs = _wait_for_run(home)
        assert len(runs) == 1
        run = runs[0]
        assert run.status == DagsterRunStatus.SUCCESS, run.status
        assert run.tags.get("dagster/partition") == DAY

        # 3. The run page shows the run succeeded.
        page.goto(f"{base}/runs/{run.run_id}")
        expect(page.get_by_text("Success", exact=False).first).to_be_visible()
        page.screenshot(path=str(SHOTS / "03_run.png"))

        # 4. Monitoring metadata of the partition: the filter-chain table with events/items loss per filter.
        page.goto(f"{base}/assets/filtered_events?view=events&partition={DAY}")
        _dismiss_community_modal(page)
        expect(page.get_by_text("filter_chain").first).to_be_visible()
        expect(page.get_by_text("quarantine").first).to_be_visible()
        page.screenshot(path=str(SHOTS / "04_partition_metadata.png"), full_page=True)

        # 5. The asset check result for the partition.
        page.goto(f"{base}/assets/filtered_events?view=checks")
        _dismiss_community_modal(page)
        expect(page.get_by_text("filter_item_loss_within_limits").first).to_be_visible()
        expect(page.get_by_text("Passed").first).to_be_visible()
        page.screenshot(path=str(SHOTS / "05_asset_checks.png"))
        browser.close()

    with DagsterInstance.from_config(str(home)) as instance:
        from dagster import AssetKey

        mat = instance.get_latest_materialization_event(AssetKey("filtered_events"))
        assert mat is not None and mat.asset_materialization.partition == DAY
        assert mat.asset_materialization.metadata["dagster/row_count"].value > 0
