"""Turning what users pass into the arrays the C++ engine reads, without copies."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from fusedopt import _cuda


def as_array(x: Any, name: str) -> Any:
    """Return `x` as a NumPy view when it is a DLPack CPU tensor; else unchanged
    (CUDA arrays included: see fusedopt._cuda).

    Arrays that are neither NumPy nor DLPack are passed on as they are, and the
    engine's validation rejects them with a TypeError naming `name`.
    """
    if isinstance(x, np.ndarray):
        return x
    if _cuda.is_cuda_array(x):  # passed on as is: the CUDA entry points read it
        return x
    if not hasattr(x, "__dlpack__"):
        return x
    try:
        view = np.from_dlpack(x)
    except (BufferError, TypeError, RuntimeError, ValueError) as err:
        raise TypeError(
            f"{name} could not be viewed as a CPU array through DLPack: {err}"
        ) from err
    return view


def as_array_list(xs: Any, name: str) -> list:
    """A list of arrays from a list/tuple (or one array), each viewed without copying."""
    if isinstance(xs, np.ndarray) or hasattr(xs, "__dlpack__"):
        raise TypeError(f"{name} must be a list of arrays, not a single array; wrap it in a list")
    if not isinstance(xs, (list, tuple)):
        raise TypeError(f"{name} must be a list of arrays, got {type(xs).__name__}")
    return [as_array(x, f"{name}[{i}]") for i, x in enumerate(xs)]


def as_state_lists(states: Sequence[Any], names: Sequence[str]) -> list:
    return [as_array_list(s, n) for s, n in zip(states, names)]


# Optimizer state like a parameter, on the parameter's device (NumPy or CUDA).
def zeros_like(p: Any) -> Any:
    return np.zeros_like(p) if isinstance(p, np.ndarray) else _cuda.zeros_like(p)


def full_like(p: Any, value: float) -> Any:
    return np.full_like(p, value) if isinstance(p, np.ndarray) else _cuda.full_like(p, value)


def zeros(p: Any, shape: Sequence[int]) -> Any:
    """Zeros of `shape` with p's dtype, on p's device."""
    return np.zeros(tuple(shape), p.dtype) if isinstance(p, np.ndarray) else _cuda.zeros(p, shape)


def copy(p: Any) -> Any:
    return p.copy() if isinstance(p, np.ndarray) else _cuda.copy(p)
