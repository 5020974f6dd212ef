"""fusedopt: fused, multi-threaded C++ optimizer kernels for Keras and NumPy.

The top level holds the NumPy-facing optimizers (Keras's names and numerics)
and engine controls; `fusedopt.ops` holds the functional in-place kernels.
"""

from __future__ import annotations

import platform
import warnings
from pathlib import Path
from typing import Any

from fusedopt import _core, ops, optimizers, regularizers
from fusedopt.optimizers import *  # noqa: F403 - every optimizer: optimizers.__all__

__version__ = "0.1.0"

if _core.config_warning():  # e.g. FUSEDOPT_NUM_THREADS=abc: ignored, said once at import
    warnings.warn(f"fusedopt: {_core.config_warning()}", RuntimeWarning, stacklevel=2)


def set_num_threads(num_threads: int) -> None:
    """Use `num_threads` threads (the caller included) in every kernel call.

    Results are bitwise identical for every thread count. The default is the
    FUSEDOPT_NUM_THREADS or OMP_NUM_THREADS environment variable (a whole
    number in 1..1024; any other value is ignored with a warning at import),
    else the number of CPUs. A step running in another thread finishes
    first. After ``fork`` the child keeps the count and starts its own threads.

    Raises:
        TypeError: `num_threads` is not an int.
        ValueError: it is outside 1..1024.
        RuntimeError: the system could not start the threads (the previous
            count stays in force).
    """
    if isinstance(num_threads, bool) or not isinstance(num_threads, int):
        raise TypeError(f"num_threads must be an int, got {type(num_threads).__name__}")
    if not 1 <= num_threads <= _core.max_threads:
        raise ValueError(f"num_threads must be in 1..{_core.max_threads}, got {num_threads}")
    _core.set_num_threads(num_threads)


def get_num_threads() -> int:
    """The number of threads kernel calls use."""
    return _core.get_num_threads()


def build_info() -> dict[str, Any]:
    """What this build runs with: ISA in use and available, threads, versions, and
    CUDA: whether the kernels are compiled in (``cuda_compiled``), the devices
    usable now (``cuda_devices``; 0 without a GPU or driver, ``cuda_status``
    says why) and the CUDA runtime version built against (0: none)."""
    import numpy

    cuda_devices = _core.cuda_device_count()
    return {
        "version": __version__,
        "isa": _core.active_isa(),
        "available_isas": _core.available_isas(),
        "num_threads": _core.get_num_threads(),
        "compiler": _core.compiler,
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "machine": platform.machine(),
        "chunk_elements": _core.chunk_elements,
        "cuda_compiled": bool(_core.cuda_compiled),
        "cuda_devices": cuda_devices,
        "cuda_runtime": _core.cuda_runtime_version(),
        "cuda_status": "ok" if cuda_devices else _core.cuda_no_device_reason(),
    }


def get_include() -> str:
    """The directory that holds ``fusedopt/c_api.h``, ``fusedopt/c_api_cuda.h`` and
    the header-only math, for compiling against this installed fusedopt
    (``-I$(python -c 'import fusedopt; print(fusedopt.get_include())')``), and
    ``libfusedopt_engine.so`` is in the directory above it. With CMake, use
    `get_cmake_dir` and the target ``fusedopt::engine`` instead.

    Raises:
        FileNotFoundError: this fusedopt has no headers (run from a source tree,
            not installed).
    """
    return _installed_dir(Path("include"), "fusedopt/c_api.h")


def get_cmake_dir() -> str:
    """The directory that holds ``fusedoptConfig.cmake``, for
    ``cmake -Dfusedopt_DIR=...`` (or a ``CMAKE_PREFIX_PATH`` entry), so that
    ``find_package(fusedopt CONFIG REQUIRED)`` gives the imported target
    ``fusedopt::engine``: this package's ``libfusedopt_engine`` and `get_include`'s
    headers. Example: ``examples/cpp``.

    Raises:
        FileNotFoundError: this fusedopt has no CMake package config (run from a
            source tree, not installed).
    """
    return _installed_dir(Path("share", "cmake", "fusedopt"), "fusedoptConfig.cmake")


def _installed_dir(relative: Path, marker: str) -> str:
    """`relative` under the package directory, once it is known to hold `marker`."""
    directory = Path(__file__).resolve().parent / relative
    if not (directory / marker).is_file():
        raise FileNotFoundError(f"fusedopt: no {marker} in {directory}: this fusedopt is not an "
                                f"installed build (install it with pip)")
    return str(directory)


__all__ = [
    *optimizers.__all__,
    "ops",
    "regularizers",
    "build_info",
    "set_num_threads",
    "get_num_threads",
    "get_include",
    "get_cmake_dir",
    "__version__",
]
