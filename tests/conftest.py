"""Shared pytest setup for the engine + NumPy API tests.

The registry of optimizer cases lives in `registry.py`, the float64 NumPy
reference in `reference.py`; this file only holds fixtures.
"""

from __future__ import annotations

import os

# Keras comparisons run on the TensorFlow backend; keep TF's start-up logs quiet.
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

# A process has one Keras backend: tests/jax runs in a process of its own on
# the JAX backend (`KERAS_BACKEND=jax python -m pytest tests/jax`, part of the
# README's test command).
collect_ignore = [] if os.environ["KERAS_BACKEND"] == "jax" else ["jax"]

import fusedopt  # noqa: E402
from fusedopt import _core  # noqa: E402


@pytest.fixture(autouse=True)
def restore_engine_settings():
    """Every test leaves the thread count and the ISA as it found them."""
    threads = fusedopt.get_num_threads()
    isa = _core.active_isa()
    yield
    fusedopt.set_num_threads(threads)
    _core.set_isa(isa)


def pytest_terminal_summary(terminalreporter):
    """After a run of tests/test_fuzz.py: examples per fuzz property, and the total."""
    import sys

    fuzz = sys.modules.get("test_fuzz")
    if fuzz is not None and fuzz.RESULTS:
        terminalreporter.section("fuzz")
        for line in fuzz.summary_lines():
            terminalreporter.write_line(line)
