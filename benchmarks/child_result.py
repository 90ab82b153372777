"""The benchmarks' measured-child protocol: a script reruns itself in a fresh process (so its peak RSS is that
step's alone), the child prints one `RESULT {json}` line, the parent reads it back."""

from __future__ import annotations

import json
import subprocess

PREFIX = "RESULT "


def peak_rss_mb() -> float:
    """This process's peak RSS (VmHWM), in MB. Not getrusage's ru_maxrss: Linux carries the parent's peak across the
    fork + exec that starts a child, so a child's ru_maxrss is never below its parent's (a benchmark's parent that
    held a large frame would set every measured child's floor)."""
    with open("/proc/self/status") as f:
        return round(next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024, 1)


def report(result: dict) -> None:
    """In the child: print the result line."""
    print(PREFIX + json.dumps(result), flush=True)


def run_child(cmd: list[str], what: str, env: dict | None = None) -> dict:
    """Run `cmd` and return the dict its RESULT line carries; exits naming `what` (with stderr's tail) without one."""
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    line = next((x for x in out.stdout.splitlines() if x.startswith(PREFIX)), None)
    if line is None:
        raise SystemExit(f"{what}: the measured process printed no result\n{out.stderr[-3000:]}")
    return json.loads(line[len(PREFIX) :])
