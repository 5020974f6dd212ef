"""fusedopt.keras: drop-in Keras 3 optimizers that run one fused op per step.

Change one import::

    from fusedopt.keras import Adam       # instead of keras.optimizers.Adam
    model.compile(optimizer=Adam(1e-3), loss=...)

On the TensorFlow backend each step runs one fused in-graph op over all
variables (built at first use against the installed TensorFlow into a cache
only the user can write, and verified before it is loaded; build it ahead of
time with ``fusedopt build-ops`` or ``prebuild()``). On the JAX backend each
step runs one XLA FFI custom call over all variables, in place under Keras's
jitted train step (the handler is built at first use against the installed
JAX, cached and verified the same way), and under TensorFlow's XLA
(``jit_compile=True``, CPU) the op's XLA kernel makes it one custom call.
Elsewhere (the torch backend, XLA on a GPU) the optimizers run Keras's own
update, with the same numbers. Every optimizer also takes fused
``l1=``, ``l2=`` and ``proximal_l1=`` regularization.

``fusedopt.keras.regularizers`` (``L1``, ``L2``, ``L1L2``, ``L2SP``) and
``fusedopt.keras.layers.Dropout`` are drop-ins whose penalty gradients and
dropout masks are fused C++ kernels too.
"""

from __future__ import annotations

from typing import Any

from fusedopt.keras import _op_library, _xla_library, layers, regularizers
from fusedopt.keras._op_library import OpLibraryError
from fusedopt.keras import optimizers
from fusedopt.keras.optimizers import *  # noqa: F403 - every optimizer: optimizers.__all__


def build_ops(force: bool = False) -> str:
    """Build (or find in the cache) the TensorFlow op library; return its path."""
    return str(_op_library.build(force=force))


def prebuild() -> dict[str, Any]:
    """Build (or find in the cache), verify and load the TensorFlow op library now rather
    than at the first fused step; return `op_library_status()`.

    Raises OpLibraryError saying why where it cannot be (a cache other users could
    write, no compiler, ...); the optimizers then run Keras's own update.
    """
    _op_library.load()
    return _op_library.status()


def op_library_status() -> dict[str, Any]:
    """Whether the op library is loaded, its path, the error if it could not be, the cache
    directory and what it holds. A query: it never builds, loads or runs a compiler."""
    return _op_library.status()


def xla_library_status() -> dict[str, Any]:
    """As `op_library_status`, for the XLA FFI handler the JAX backend runs. A query: it
    never builds, loads or runs a compiler."""
    return _xla_library.status()


__all__ = [
    *optimizers.__all__, "build_ops", "prebuild", "op_library_status", "xla_library_status",
    "OpLibraryError", "layers",
    "regularizers",
]
