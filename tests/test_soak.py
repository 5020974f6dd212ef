"""Soak (issue 12), CI size: tests/soak.py in a child process, so that a
deadlock fails with every thread's stack instead of hanging the test run. The
long run is ``python tests/soak.py --steps 100000``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SOAK = Path(__file__).with_name("soak.py")
STEPS = 4000
HAS_STATM = Path("/proc/self/statm").exists()


def run_soak(*args: str, timeout: float) -> subprocess.CompletedProcess:
    try:
        return subprocess.run([sys.executable, str(SOAK), *args], capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired as err:
        pytest.fail(f"the soak did not end within {timeout} s, its own watchdog included "
                    f"(a deadlock holding the GIL?); output:\n{err.stdout}\n{err.stderr}")


@pytest.mark.skipif(not HAS_STATM, reason="reads resident memory from /proc/self/statm (Linux)")
def test_mixed_concurrent_steps_neither_hang_nor_leak_nor_change_results(tmp_path):
    """4000 steps of 12 optimizers, dropout and penalties from 4 Python threads,
    each changing the engine's thread count (1..4) while the others step: no
    error or deadlock, every value finite, one optimizer per thread bitwise
    equal to its replay on one engine thread, dropout and penalties equal to
    their single-threaded values on every call, and resident memory grown by
    under 1 MB from the end of the warm-up to the end."""
    out = tmp_path / "soak.json"
    proc = run_soak("--steps", str(STEPS), "--warmup", "1000", "--stall-timeout", "30",
                    "--json", str(out), timeout=150)
    if proc.returncode == 3:
        pytest.fail(f"the soak deadlocked:\n{proc.stderr}")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(out.read_text())
    assert result["ok"] and result["problems"] == []
    assert result["steps"] == STEPS and sum(result["calls_per_job"].values()) == STEPS
    assert min(result["calls_per_job"].values()) > 0
    assert result["engine_threads"] == [1, 2, 3, 4]
    assert len(result["replayed"]) == 4
    assert result["rss_growth_bytes"] < 2**20, f"RSS grew by {result['rss_growth_bytes']} bytes"
    assert "0 problems: OK" in proc.stdout.splitlines()[-1]


def test_a_thread_that_stops_fails_the_soak_with_every_stack():
    """The watchdog itself: a worker that stops stepping (as in a deadlock) ends
    the soak with status 3, the message and each thread's Python stack, within
    the stall timeout rather than never."""
    proc = run_soak("--steps", "400", "--warmup", "200", "--simulate-hang", "--stall-timeout", "2",
                    "--no-rss-check", timeout=90)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "soak: DEADLOCK? no step completed for 2 s" in proc.stderr
    assert proc.stderr.count("in worker") == 4  # every Python thread's stack
