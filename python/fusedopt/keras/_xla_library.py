"""Build, cache, verify and load the XLA FFI handler (cpp/xla) at first use, and
register it with JAX.

An XLA runtime refuses handlers built against newer FFI headers than its
own, so the handler is compiled against the headers of the JAX that loads
it (``jax.ffi.include_dir()``); the math is already compiled in the package
(libfusedopt_engine). The cache and its trust checks are
`fusedopt._build_cache`'s, as for the TensorFlow op library. The handler is
registered for the CPU platform under one target per rule,
``fusedopt_<rule>``, so that a compiled program names the rule it runs.
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading
from pathlib import Path
from typing import Any, Iterator

from fusedopt import _build_cache as _cache
from fusedopt import _core
from fusedopt._build_cache import OpLibraryError

_PACKAGE_DIR = Path(__file__).resolve().parent.parent
_SOURCE = "fused_update_ffi.cc"
_HEADER = "fused_update_ffi.h"
_LIB_NAME = "fusedopt_xla_ffi.so"
_HANDLER = "fusedopt_fused_update"
DISABLE_ENV = "FUSEDOPT_DISABLE_XLA_OPS"

_lock = threading.Lock()
_state: dict[str, Any] = {"module": None, "error": None, "path": None, "tried": False}


def target(rule: str) -> str:
    """The custom-call target that runs engine rule `rule`."""
    return "fusedopt_" + rule


def _source() -> Path:
    return _PACKAGE_DIR / "xla_src" / _SOURCE


def build_command(output: Path) -> list[str]:
    """The one compile-and-link command of the handler library."""
    import jax.ffi

    return (_cache.compiler() + ["-O2", "-fPIC", "-w", "-std=c++17", "-shared",
                                 "-I" + jax.ffi.include_dir(), "-I" + str(_PACKAGE_DIR / "include"),
                                 str(_source()), "-o", str(output),
                                 "-L" + str(_PACKAGE_DIR), "-l:libfusedopt_engine.so",
                                 "-Wl,-rpath," + str(_PACKAGE_DIR)])


def _compile_and_link(build_dir: Path) -> tuple[Path, dict[str, Any]]:
    library = build_dir / _LIB_NAME
    command = build_command(library)
    _cache.link(command, "the XLA FFI handler")
    return library, {"command": command}


def _inputs() -> Iterator[bytes]:
    import jax
    import jaxlib

    from fusedopt import __version__

    for part in (__version__, jax.__version__, jaxlib.__version__, sys.platform,
                 " ".join(build_command(Path("OUT")))):
        yield part.encode()
    yield _source().read_bytes()
    yield (_source().parent / _HEADER).read_bytes()
    for header in sorted((_PACKAGE_DIR / "include" / "fusedopt").rglob("*.h")):
        yield header.read_bytes()
    import jax.ffi

    for header in sorted(Path(jax.ffi.include_dir(), "xla", "ffi", "api").glob("*.h")):
        yield header.read_bytes()


_LIBRARY = _cache.Library(_LIB_NAME, inputs=lambda: _inputs(),
                          compile_and_link=lambda build_dir: _compile_and_link(build_dir),
                          compiler_version=lambda: _cache.compiler_version(_cache.compiler()))


def build(force: bool = False) -> Path:
    """Build the handler library into the checked cache (unless a verified entry is there,
    or `force`) and return its path; raises OpLibraryError."""
    return _cache.build(_LIBRARY, _cache.identity(_LIBRARY), force)


def _register(library: ctypes.CDLL) -> None:
    import jax.ffi

    capsule = jax.ffi.pycapsule(getattr(library, _HANDLER))
    for rule in _core.rules():
        jax.ffi.register_ffi_target(target(rule), capsule, platform="cpu")


def load() -> ctypes.CDLL:
    """The loaded handler library, built at first use and registered with JAX; raises
    OpLibraryError."""
    return _cache.load_once(_state, _lock, DISABLE_ENV, _build_and_load)


def _build_and_load() -> tuple[ctypes.CDLL, Path]:
    import jax.ffi  # noqa: F401 - jax >= 0.5

    module, _, _state["library_fd"], path = _cache.build_and_load(_LIBRARY, ctypes.CDLL)
    _register(module)
    return module, path


def available() -> bool:
    """Whether the handler can be used; warns once (and only once) if not."""
    return _cache.loads_or_warns(_state, load, "the XLA FFI handler is unavailable, so fusedopt.keras "
                                 "optimizers use Keras's own update on the JAX backend (same numbers, not fused)")


def status() -> dict[str, Any]:
    """Whether the handler library is loaded, where, why not, and what the cache holds;
    never builds, loads or runs a compiler."""
    return _cache.status(_state, _LIBRARY)


# -- the JAX update ------------------------------------------------------------------------------
# The dtypes the handler takes (float64 only where JAX has x64 enabled).
FUSED_DTYPES = ("float32", "float64")


def usable() -> bool:
    """The handler can run here: the JAX backend without a Keras distribution (its
    sharded variables take Keras's update) and the library loads (else one warning)."""
    import keras

    if keras.backend.backend() != "jax" or keras.distribution.distribution() is not None:
        return False
    return available()


# Below this many elements a variable takes Keras's update, which XLA fuses
# into a loop costing well under a microsecond; a custom-call operand costs
# XLA's runtime about a microsecond per step (it builds the call frame each
# execution), and the engine ~2 us per tensor. Measured on 2 CPUs, Adam and
# SGD (benchmarks/bench_keras_jax.py): parity at 16K elements per tensor,
# the custom call 1.1-1.4x faster at 64K, 1.6-1.8x at 1M and up.
DEFAULT_MIN_FUSED_SIZE = 32768
MIN_FUSED_SIZE_ENV = "FUSEDOPT_JAX_MIN_FUSED_SIZE"


def min_fused_size() -> int:
    """The fewest elements a variable needs to go to the custom call (`DEFAULT_MIN_FUSED_SIZE`,
    or the whole number in $FUSEDOPT_JAX_MIN_FUSED_SIZE; 0 fuses every variable)."""
    text = os.environ.get(MIN_FUSED_SIZE_ENV, "").strip()
    if not text:
        return DEFAULT_MIN_FUSED_SIZE
    try:
        value = int(text)
        if value < 0:
            raise ValueError
    except ValueError:
        raise ValueError(f"{MIN_FUSED_SIZE_ENV} must be a whole number >= 0, got {text!r}") from None
    return value


def takes(x: Any) -> bool:
    """Whether the handler takes variable `x`: float32/float64 on the CPU, with at
    least `min_fused_size()` elements."""
    import math

    import keras

    if keras.backend.standardize_dtype(x.dtype) not in FUSED_DTYPES:
        return False
    if math.prod(x.shape) < min_fused_size():
        return False
    devices = getattr(getattr(x, "value", x), "devices", None)
    try:
        return all(d.platform == "cpu" for d in devices()) if callable(devices) else True
    except Exception:  # noqa: BLE001 - a tracer under jit: placed by the program, the host here
        return True


def fused_update(rule: str, hyper: dict[str, Any], params: list, grads: list, states: list,
                 learning_rate: Any, step: Any, decay: Any, regularization: tuple[float, float, float]):
    """One custom call of `rule` over `params` (arrays of one dtype), `grads` and `states`
    (state k of tensor i at k * len(params) + i): the new params and states, aliased to the
    old ones (in place where they are donated, as in Keras's jitted train step).

    `hyper` maps the rule's hyperparameter names to Python numbers (exact, as attributes)
    or traced values (e.g. Nadam's u_product variable), passed as a buffer."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    load()
    names = _core.rules()[rule]["hyper"]
    values, dynamic = [], []
    for name in names:
        value = hyper[name]
        if isinstance(value, (bool, int, float, np.number)):
            values.append(float(value))
        else:
            values.append(float("nan"))
            dynamic.append(jnp.asarray(value, params[0].dtype).reshape(()))
    dynamic_hyper = jnp.stack(dynamic) if dynamic else jnp.zeros((0,), params[0].dtype)
    n = len(params)
    scalars = 4  # learning_rate, step, decay, dynamic_hyper
    aliases = {scalars + i: i for i in range(n)}
    aliases.update({scalars + 2 * n + j: n + j for j in range(len(states))})
    call = jax.ffi.ffi_call(target(rule), [jax.ShapeDtypeStruct(x.shape, x.dtype) for x in params + states],
                            input_output_aliases=aliases, vmap_method="sequential")
    out = call(jnp.asarray(learning_rate), jnp.asarray(step), jnp.asarray(decay), dynamic_hyper,
               *params, *grads, *states, rule=rule, hyper=np.asarray(values, np.float64),
               regularization=np.asarray(regularization, np.float64))
    return list(out[:n]), list(out[n:])
