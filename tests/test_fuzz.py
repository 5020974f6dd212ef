"""Property-based fuzzing of every public entry point (tests/fuzz/fuzz_*.py),
each property in a child process: a crash in native code (SIGSEGV, SIGABRT)
fails that one test, with the signal and the example it was running, instead
of killing the whole run.

Each child runs ``pytest tests/fuzz/<module>::<property> --hypothesis-seed=0``
with the modules' per-property example counts: about three minutes in all on
two cores. The terminal summary lists, per property, the examples run, the
share compared with the reference (the rest are rejected inputs) and the
time, then the total.

A longer developer run, with a random seed (printed, so that a failing run
can be repeated with FUSEDOPT_FUZZ_SEED=<that seed>):

    FUSEDOPT_FUZZ_EXAMPLES=5000 FUSEDOPT_FUZZ_SEED=random python -m pytest -q tests/test_fuzz.py

FUSEDOPT_FUZZ_EXAMPLES sets every property's number of examples;
FUSEDOPT_FUZZ_SEED the Hypothesis seed (default 0). Run one module's
properties directly, in this process, with
``python -m pytest -q tests/fuzz/fuzz_numpy.py --hypothesis-show-statistics``.
tests/fuzz/fuzz_c_api.py targets the C API that returns a status per call
and has fusedopt_last_error(); its properties are skipped, saying so, while
the installed libfusedopt_engine has the void-returning one.
"""

from __future__ import annotations

import ast
import ctypes
import importlib.util
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

FUZZ_DIR = Path(__file__).resolve().parent / "fuzz"
MODULES = ["fuzz_numpy.py", "fuzz_regularizers_dropout.py", "fuzz_tf.py", "fuzz_c_api.py"]
NEEDS_TENSORFLOW = {"fuzz_tf.py"}
CHILD_TIMEOUT_S = 900

_seed_env = os.environ.get("FUSEDOPT_FUZZ_SEED", "0")
SEED = random.SystemRandom().randrange(2**32) if _seed_env == "random" else int(_seed_env)

# (module, property) -> (examples, share compared with the reference, seconds): the summary.
RESULTS: dict[tuple[str, str], tuple[int, str, float]] = {}


def c_api_has_status() -> bool:
    """Whether the installed engine library has the C API that validates
    and returns a status (fusedopt_last_error is its marker)."""
    spec = importlib.util.find_spec("fusedopt")
    lib = Path(spec.origin).parent / "libfusedopt_engine.so"
    return hasattr(ctypes.CDLL(str(lib)), "fusedopt_last_error")


def properties(module: str) -> list[str]:
    """The module's test functions, read from its source (importing it would
    import what it fuzzes, TensorFlow included, into this process)."""
    tree = ast.parse((FUZZ_DIR / module).read_text())
    return [node.name for node in tree.body if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")]


CASES = [(m, p) for m in MODULES for p in properties(m)]


def examples_run(output: str) -> tuple[int, str]:
    """(examples of the generate phase, "NN.NN%" compared with the reference)
    from Hypothesis' statistics."""
    run = re.search(r"during generate phase.*?- (\d+) passing examples, (\d+) failing", output, re.S)
    share = re.search(r"([\d.]+%), valid: compared with the reference", output)
    return (int(run.group(1)) + int(run.group(2)) if run else 0), (share.group(1) if share else "0%")


def summary_lines() -> list[str]:
    lines = [f"{m}::{p}: {n} examples ({share} compared with the reference) in {t:.1f} s"
             for (m, p), (n, share, t) in sorted(RESULTS.items())]
    total = sum(n for n, _, _ in RESULTS.values())
    seconds = sum(t for _, _, t in RESULTS.values())
    lines.append(f"fuzz total: {total} examples in {len(RESULTS)} properties, {seconds:.1f} s, "
                 f"--hypothesis-seed={SEED}")
    return lines


@pytest.mark.parametrize("module, prop", CASES, ids=[f"{m[:-3]}::{p}" for m, p in CASES])
def test_fuzz_property(module, prop):
    if module in NEEDS_TENSORFLOW and importlib.util.find_spec("tensorflow") is None:
        pytest.skip("TensorFlow is not installed (the TF ops are built against it)")
    if module == "fuzz_c_api.py" and not c_api_has_status():
        pytest.skip("needs the C API that returns a status per call (fusedopt_last_error); "
                    "the installed libfusedopt_engine has the void-returning one")
    with tempfile.TemporaryDirectory(prefix="fusedopt-fuzz-") as tmp:
        trace_file = Path(tmp) / "example.txt"
        env = dict(os.environ, FUSEDOPT_FUZZ_TRACE=str(trace_file), HYPOTHESIS_STORAGE_DIRECTORY=tmp,
                   PYTHONFAULTHANDLER="1")
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"{FUZZ_DIR / module}::{prop}",
               f"--hypothesis-seed={SEED}", "--hypothesis-show-statistics"]
        start = time.monotonic()
        try:
            child = subprocess.run(cmd, cwd=FUZZ_DIR.parent.parent, env=env, capture_output=True, text=True,
                                   timeout=CHILD_TIMEOUT_S)
            output, code = child.stdout + child.stderr, child.returncode
        except subprocess.TimeoutExpired as err:
            output = (err.stdout or b"").decode(errors="replace") + (err.stderr or b"").decode(errors="replace")
            code = None
        seconds = time.monotonic() - start
        example = trace_file.read_text() if trace_file.exists() else "(none recorded)"
    RESULTS[(module, prop)] = (*examples_run(output), seconds)
    if code == 0:
        return
    if code is None:
        why = f"the child ran past {CHILD_TIMEOUT_S} s and was killed"
    elif code < 0:
        why = f"the child died from {signal.Signals(-code).name} while running this example:\n{example}"
    else:
        why = f"the child exited with status {code}"
    pytest.fail(f"{module}::{prop} (--hypothesis-seed={SEED}): {why}\n\n--- child output ---\n"
                f"{output[-20000:]}", pytrace=False)
