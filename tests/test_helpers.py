"""The suite's own process hygiene: a server a test starts is stopped with everything it started, even a child that
put itself in a session of its own (the `dagster api grpc` code server a killed daemon once left running for an
hour, re-parented to PID 1)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from tests.helpers import _alive, descendants, stop_process_tree

SERVER = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"], start_new_session=True)
print(child.pid, flush=True)
time.sleep(300)
"""


def _start():
    proc = subprocess.Popen([sys.executable, "-c", SERVER], stdout=subprocess.PIPE, text=True, start_new_session=True)
    child = int(proc.stdout.readline())
    assert child in descendants(proc.pid)
    return proc, child


def test_a_process_group_kill_leaves_a_child_of_its_own_session_running():
    proc, child = _start()
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # what the suite did before
        proc.wait(timeout=10)
        time.sleep(0.5)
        assert _alive(child)  # the leak: re-parented, still running
    finally:
        os.kill(child, signal.SIGKILL)


def test_stop_process_tree_stops_the_server_and_every_child():
    proc, child = _start()
    stop_process_tree(proc, timeout_s=5)
    assert proc.poll() is not None and not _alive(child)
