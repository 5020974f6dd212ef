"""pytest plugin for tests/sanitize.sh (loaded with ``-p sanitize_plugin``).

It guards the sanitizer run itself: the session stops at once unless the
imported fusedopt is the sanitized build the script installed (its engine
and _core link the ASan runtime, which is loaded in this process, and they
come from FUSEDOPT_SANITIZE_PREFIX); and it fails the session when a test
imported TensorFlow, Keras, torch or JAX (a framework under a preloaded ASan
runtime is slow and its own reports are not ours: such a test belongs with
the framework tests, not in this run).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

FRAMEWORKS = ("tensorflow", "keras", "torch", "jax")


def _mapped_libraries() -> set[str]:
    with open("/proc/self/maps") as maps:
        return {line.split()[-1] for line in maps if "/" in line.split()[-1]}


def sanitized_build_problem() -> str | None:
    """Why this process does not run the sanitized fusedopt (None: it does)."""
    import fusedopt
    from fusedopt import _core

    package = Path(fusedopt.__file__).resolve().parent
    prefix = os.environ.get("FUSEDOPT_SANITIZE_PREFIX")
    if not prefix:
        return "FUSEDOPT_SANITIZE_PREFIX is not set (run tests/sanitize.sh)"
    if not package.is_relative_to(Path(prefix).resolve()):
        return f"fusedopt was imported from {package}, not from the sanitized build under {prefix}"
    mapped = _mapped_libraries()
    if not any(Path(m).name.startswith("libasan") for m in mapped):
        return "the ASan runtime is not loaded in this process"
    core = Path(_core.__file__).resolve()
    engines = [m for m in mapped if Path(m).name.startswith("libfusedopt_engine")]
    if str(core) not in mapped or [str(Path(e).resolve().parent) for e in engines] != [str(package)]:
        return f"loaded fusedopt libraries are not the sanitized ones in {package}: {engines}"
    for lib in (core, Path(engines[0])):
        data = lib.read_bytes()
        if b"__asan_init" not in data or b"__ubsan_handle_" not in data:
            return f"{lib} is not built with AddressSanitizer and UBSan"
    return None


def pytest_sessionstart(session):
    problem = sanitized_build_problem()
    if problem:
        raise pytest.UsageError(f"sanitize_plugin: {problem}")
    import fusedopt

    print(f"sanitize_plugin: fusedopt {fusedopt.__file__} (ASan + UBSan build, ASan runtime loaded)")


def pytest_sessionfinish(session, exitstatus):
    loaded = sorted(name for name in FRAMEWORKS if name in sys.modules)
    if loaded:
        print(f"\nsanitize_plugin: these tests imported {', '.join(loaded)}; "
              "framework tests do not belong in the sanitizer run", file=sys.stderr)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
