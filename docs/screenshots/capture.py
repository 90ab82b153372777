"""Screenshots of a finished `make demo` for docs/screenshots/: the trained ranker's asset page in the Dagster UI
(its freshness policy, beside its validation metrics) and that MLflow run in the MLflow UI. The UI test
(tests/test_ui_browser.py) writes the others.

    .venv/bin/python docs/screenshots/capture.py --dagster-home .dagster_home

Starts `dagster-webserver` over workspace.yaml and `mlflow ui` over the demo's SQLite store, each on a free port,
drives Debian's Chromium through Playwright, and stops both.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SHOTS = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen, what: str) -> None:
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited ({proc.returncode})")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--dagster-home", default=str(REPO / ".dagster_home"))
    a = p.parse_args()
    home = Path(a.dagster_home).resolve()
    store = f"sqlite:///{home / 'mlflow.db'}"
    from mlflow import MlflowClient
    from playwright.sync_api import sync_playwright

    client = MlflowClient(tracking_uri=store)
    exp = client.get_experiment_by_name("recsys/ranker_model")
    run = client.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"], max_results=1)[0]
    web_port, ml_port = free_port(), free_port()
    env = {**os.environ, "DAGSTER_HOME": str(home)}
    procs = [
        subprocess.Popen(
            [str(BIN / "dagster-webserver"), "-h", "127.0.0.1", "-p", str(web_port), "-w", "workspace.yaml"],
            cwd=REPO,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        ),
        subprocess.Popen(
            [str(BIN / "mlflow"), "ui", "--backend-store-uri", store, "-h", "127.0.0.1", "-p", str(ml_port)],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        ),
    ]
    try:
        wait_http(f"http://127.0.0.1:{web_port}/server_info", procs[0], "dagster-webserver")
        wait_http(f"http://127.0.0.1:{ml_port}/health", procs[1], "mlflow ui")
        chromium = shutil.which("chromium") or "/usr/bin/chromium"
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page(viewport={"width": 1500, "height": 1000})
            # What the UI stores once its community sign-up modal is dismissed (as tests/test_ui_browser.py does).
            page.add_init_script("window.localStorage.setItem('communityNux', JSON.stringify('1'))")
            page.goto(f"http://127.0.0.1:{web_port}/assets/ranker_model", wait_until="networkidle", timeout=120_000)
            page.get_by_text("Freshness", exact=False).first.wait_for(timeout=120_000)
            time.sleep(2)
            page.screenshot(path=str(SHOTS / "06_ranker_freshness_policy.png"), full_page=True)
            url = f"http://127.0.0.1:{ml_port}/#/experiments/{exp.experiment_id}/runs/{run.info.run_id}"
            page.goto(url, wait_until="networkidle", timeout=120_000)
            page.get_by_text("auc.liked").first.wait_for(timeout=120_000)
            time.sleep(2)
            page.screenshot(path=str(SHOTS / "07_mlflow_ranker_run.png"), full_page=True)
            browser.close()
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=30)
    print("wrote", SHOTS / "06_ranker_freshness_policy.png", SHOTS / "07_mlflow_ranker_run.png")


if __name__ == "__main__":
    main()
