"""The C++ package (issue 17): `examples/cpp` (one Adam step through the C API)
configured with CMake's ``find_package(fusedopt CONFIG)``, built and run against
``fusedopt::engine``

- from the installed Python package (``fusedopt.get_cmake_dir()``), and
- from an engine built and installed from this source tree with
  ``-DFUSEDOPT_PYTHON=OFF``, with Python and pybind11 out of CMake's reach.

The printed step is compared with a float64 NumPy computation of the same step.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

import fusedopt

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "cpp"
CMAKE = shutil.which("cmake")


def _cxx_compiler() -> str | None:
    if os.environ.get("CXX"):
        return shutil.which(os.environ["CXX"].split()[0])
    return next(filter(None, map(shutil.which, ("c++", "g++", "clang++"))), None)


pytestmark = pytest.mark.skipif(CMAKE is None or _cxx_compiler() is None,
                                reason="needs cmake and a C++ compiler on PATH")

# examples/cpp/main.cpp's inputs.
INITIAL = [1.0, -2.0, 0.5, 3.0]
GRAD = [0.1, -0.2, 0.3, -4.0]
LEARNING_RATE, BETA_1, BETA_2, EPSILON = 0.01, 0.9, 0.999, 1e-7


def adam_step_float64() -> np.ndarray:
    """Step 1 of keras.optimizers.Adam from zero slots, in float64 from the float32 inputs."""
    p = np.float32(INITIAL).astype(np.float64)
    g = np.float32(GRAD).astype(np.float64)
    t = 1
    m, v = np.zeros_like(p), np.zeros_like(p)
    m = m + (g - m) * (1 - BETA_1)
    v = v + (g * g - v) * (1 - BETA_2)
    alpha = LEARNING_RATE * np.sqrt(1 - BETA_2**t) / (1 - BETA_1**t)
    return p - m * alpha / (np.sqrt(v) + EPSILON)


def run(command: list[str], timeout: float = 600) -> str:
    proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, (f"`{' '.join(command)}` exited {proc.returncode}:\n"
                                  f"{proc.stdout}\n{proc.stderr}")
    return proc.stdout


def build_and_run_example(build_dir: Path, *cmake_args: str) -> str:
    run([CMAKE, "-S", str(EXAMPLE), "-B", str(build_dir), "-DCMAKE_BUILD_TYPE=Release",
         "-DCMAKE_CXX_FLAGS=-Wall -Wextra -Werror", *cmake_args])
    run([CMAKE, "--build", str(build_dir)])
    return run([str(build_dir / "adam_step")], timeout=60)


def check_example_output(out: str, cuda_compiled: bool) -> None:
    assert out.splitlines()[-1] == "OK", out
    assert (f"adam step 1: learning_rate={LEARNING_RATE:.9g} beta_1={BETA_1:.9g} "
            f"beta_2={BETA_2:.9g} epsilon={EPSILON:.9g}") in out
    rows = re.findall(r"^param\[(\d+)\]: (\S+) -> (\S+) ", out, re.MULTILINE)
    assert [int(i) for i, _, _ in rows] == list(range(len(INITIAL))), out
    np.testing.assert_array_equal([float(before) for _, before, _ in rows], np.float32(INITIAL))
    # float32 results: within float rounding of the float64 step (the step itself is ~1e-2).
    np.testing.assert_allclose([float(after) for _, _, after in rows], adam_step_float64(),
                               rtol=1e-6, atol=1e-7)
    # Each bad call: FUSEDOPT_ERROR_INVALID_ARGUMENT (-1) and a message naming the argument.
    for bad_call, named in (("unknown rule", "rule"), ("NULL grad", "tensors[0].grad")):
        match = re.search(rf"^{bad_call}: status -1, message \"(.+)\" \(refused as expected\)$",
                          out, re.MULTILINE)
        assert match and named in match.group(1), out
    assert f"cuda kernels compiled: {int(cuda_compiled)}" in out


def test_example_against_the_installed_package(tmp_path):
    cmake_dir = Path(fusedopt.get_cmake_dir())
    include = Path(fusedopt.get_include())
    assert (cmake_dir / "fusedoptConfig.cmake").is_file()
    assert (include / "fusedopt" / "c_api.h").is_file()
    assert (include / "fusedopt" / "c_api_cuda.h").is_file()
    assert (include / "fusedopt" / "rules" / "adam.h").is_file()
    version_file = (cmake_dir / "fusedoptConfigVersion.cmake").read_text()
    assert f'set(PACKAGE_VERSION "{fusedopt.__version__}")' in version_file

    out = build_and_run_example(tmp_path / "example", f"-Dfusedopt_DIR={cmake_dir}")
    check_example_output(out, cuda_compiled=fusedopt.build_info()["cuda_compiled"])


def test_engine_builds_and_installs_without_python(tmp_path):
    build, prefix = tmp_path / "engine", tmp_path / "prefix"
    # Any find_package(Python/pybind11) would fail this configure. CUDA off
    # keeps the test short (the CUDA kernels take minutes); the ISAs stay.
    no_python = [f"-DCMAKE_DISABLE_FIND_PACKAGE_{name}=ON"
                 for name in ("Python", "Python3", "pybind11")]
    run([CMAKE, "-S", str(REPO), "-B", str(build), "-DFUSEDOPT_PYTHON=OFF", "-DFUSEDOPT_CUDA=OFF",
         *no_python])
    cache = (build / "CMakeCache.txt").read_text()
    names = re.findall(r"^(\w+):", cache, re.MULTILINE)
    found_python = [n for n in names if re.search("python|pybind11", n, re.IGNORECASE)
                    and n != "FUSEDOPT_PYTHON" and not n.startswith("CMAKE_DISABLE_FIND_PACKAGE_")]
    assert not found_python, found_python
    run([CMAKE, "--build", str(build), "--parallel", "2"], timeout=1200)
    run([CMAKE, "--install", str(build), "--prefix", str(prefix)])

    configs = list(prefix.glob("lib*/cmake/fusedopt/fusedoptConfig.cmake"))
    assert len(configs) == 1, sorted(map(str, prefix.rglob("*")))
    # The installed config refers to its own prefix only, never to the sources or the build.
    for cmake_file in configs[0].parent.glob("*.cmake"):
        text = cmake_file.read_text()
        assert str(REPO) not in text and str(build) not in text, cmake_file
    source_headers = sorted(p.relative_to(REPO / "cpp" / "include")
                            for p in (REPO / "cpp" / "include" / "fusedopt").rglob("*.h"))
    installed_headers = sorted(p.relative_to(prefix / "include")
                               for p in (prefix / "include").rglob("*.h"))
    assert installed_headers == source_headers
    assert not list(prefix.rglob("_core*")) and not list(prefix.rglob("tf_src"))

    out = build_and_run_example(tmp_path / "example", f"-DCMAKE_PREFIX_PATH={prefix}")
    check_example_output(out, cuda_compiled=False)
