"""CUDA arrays: detection, placement checks, stream choice, allocation, and the
CUDA entry points of the engine (``fusedopt._core.cuda_*``).

A CUDA array is any object that reports ``__dlpack_device__() == (2, id)``
(kDLCUDA; 13, managed memory, too) or has ``__cuda_array_interface__``:
PyTorch CUDA tensors, CuPy arrays, Numba device arrays. They are updated in
place, with no copies, on the producer's current stream (PyTorch's or CuPy's
current stream; else the legacy default stream). PyTorch tensors are read
through their attributes (``data_ptr()``, ``shape``, ``dtype``, ...), so
parameters that require a gradient can be passed as they are (as
``torch.optim`` updates them); other arrays through DLPack or
``__cuda_array_interface__``.
"""

from __future__ import annotations

import math
import sys
from typing import Any, Iterable, Optional, Sequence, Tuple

import numpy as np

from fusedopt import _core

KDL_CUDA = 2
KDL_CUDA_MANAGED = 13

__all__ = [
    "is_cuda_array", "compiled", "device_count", "placement", "apply", "engine_apply",
    "dropout", "dropout_backward", "synchronize",
]


def _dlpack_device(x: Any) -> Optional[Tuple[int, int]]:
    if not (hasattr(x, "__dlpack_device__") and hasattr(x, "__dlpack__")):
        return None
    try:
        dev = x.__dlpack_device__()
        return int(dev[0]), int(dev[1])
    except Exception:  # noqa: BLE001 - a broken producer is "not a CUDA array"
        return None


def is_cuda_array(x: Any) -> bool:
    """True for arrays in CUDA device (or managed) memory."""
    if isinstance(x, np.ndarray):
        return False
    if _module_of(x) == "torch":  # cheaper than PyTorch's __dlpack_device__
        return bool(getattr(x, "is_cuda", False))
    dev = _dlpack_device(x)
    if dev is not None:
        return dev[0] in (KDL_CUDA, KDL_CUDA_MANAGED)
    try:
        return hasattr(x, "__cuda_array_interface__")
    except Exception:  # noqa: BLE001
        return False


def compiled() -> bool:
    """Whether this build has the CUDA kernels (FUSEDOPT_CUDA at build time)."""
    return bool(getattr(_core, "cuda_compiled", False))


def device_count() -> int:
    """CUDA devices usable now: 0 without CUDA support, a driver or a device."""
    return int(_core.cuda_device_count()) if compiled() else 0


def require_cuda(name: str) -> None:
    """Raise TypeError naming `name` (a CUDA array) when it cannot be used here."""
    if not compiled():
        raise TypeError(
            f"{name} is a CUDA array but this fusedopt build has no CUDA support (built with "
            "FUSEDOPT_CUDA=OFF or without a CUDA compiler); pass CPU arrays, or rebuild with "
            "a CUDA compiler on PATH")
    if device_count() == 0:
        raise TypeError(f"{name} is a CUDA array but no CUDA device is usable here: "
                        f"{_core.cuda_no_device_reason()}")


def _named_arrays(lists: Iterable[Tuple[str, Any]]):
    """(name, array) for every array of (name, list of arrays or None) pairs."""
    for name, xs in lists:
        if xs is None:
            continue
        if not isinstance(xs, (list, tuple)):  # one array
            yield name, xs
            continue
        for i, x in enumerate(xs):
            if x is not None:
                yield f"{name}[{i}]", x


def placement(lists: Iterable[Tuple[str, Any]]) -> str:
    """"cuda" or "cpu" for the arrays of a call; mixing raises TypeError naming the array.

    `lists` is (name, list of arrays or one array) pairs, e.g. ``[("params", params), ("grads", grads)]``.
    A CUDA array in a build or on a machine without CUDA raises TypeError too.
    """
    first: Optional[Tuple[str, bool]] = None
    for name, x in _named_arrays(lists):
        cuda = is_cuda_array(x)
        if first is None:
            first = (name, cuda)
            if cuda:
                require_cuda(name)
        elif cuda != first[1]:
            where = lambda c: "a CUDA array" if c else "a CPU array"  # noqa: E731
            raise TypeError(f"{name} is {where(cuda)} but {first[0]} is {where(first[1])}; all "
                            "arrays of a call must be on one device")
    return "cuda" if first is not None and first[1] else "cpu"


def _module_of(x: Any) -> str:
    return type(x).__module__.split(".")[0]


def current_stream(arrays: Iterable[Any]) -> int:
    """The stream to run on: the producer's current stream (PyTorch, CuPy), else 0."""
    for x in arrays:
        if x is None:
            continue
        module = _module_of(x)
        if module == "torch" and "torch" in sys.modules:
            torch = sys.modules["torch"]
            return int(torch.cuda.current_stream(x.device).cuda_stream)
        if module == "cupy" and "cupy" in sys.modules:
            cupy = sys.modules["cupy"]
            with cupy.cuda.Device(x.device.id):
                return int(cupy.cuda.get_current_stream().ptr)
        return 0
    return 0


def apply(rule: str, params: Sequence[Any], grads: Sequence[Any], states: Sequence[Any],
          hyper: dict, step: int, learning_rate: float, weight_decay: float = 0.0,
          dry_run: bool = False, l1: float = 0.0, l2: float = 0.0, proximal_l1: float = 0.0,
          stream: Optional[int] = None) -> None:
    """`_core.apply` over CUDA arrays (same arguments and validation), in place."""
    if stream is None:
        stream = current_stream(params)
    _core.cuda_apply(rule, params, grads, states, hyper, step, learning_rate, weight_decay,
                     dry_run, l1, l2, proximal_l1, stream)


def engine_apply(rule: str, params: Sequence[Any], grads: Sequence[Any], states: Sequence[Any],
                 hyper: dict, step: int, learning_rate: float, weight_decay: float = 0.0,
                 dry_run: bool = False, l1: float = 0.0, l2: float = 0.0,
                 proximal_l1: float = 0.0, state_names: Optional[Sequence[str]] = None) -> None:
    """`_core.apply` for CPU arrays, `_core.cuda_apply` for CUDA arrays (by params[0]).

    CPU calls pay nothing for the CUDA path: only when the CPU engine rejects an
    argument are the lists scanned, for a clearer error about mixed devices.
    `state_names` names the state lists in such errors.
    """
    lists = [("params", params), ("grads", grads)]
    if isinstance(states, (list, tuple)):
        names = list(state_names or [])
        lists += [(names[k] if k < len(names) else f"states[{k}]", s)
                  for k, s in enumerate(states)]
    first = params[0] if isinstance(params, (list, tuple)) and params else None
    if first is not None and is_cuda_array(first):
        require_cuda("params[0]")
        try:
            apply(rule, params, grads, states, hyper, step, learning_rate, weight_decay,
                  dry_run, l1, l2, proximal_l1)
        except TypeError:
            placement(lists)  # the clearer error when a CPU array is the cause
            raise
        return
    try:
        _core.apply(rule, params, grads, states, hyper, step, learning_rate, weight_decay,
                    dry_run, l1, l2, proximal_l1)
    except TypeError:
        placement(lists)  # raises the clearer error when a CUDA array is the cause
        raise


_UPDATE_DTYPES = ("float32", "float64", "float16", "bfloat16")


def check_params(params: Sequence[Any]) -> None:
    """An optimizer's CUDA params: one supported dtype, one device, C-contiguous, writable."""
    require_cuda("params[0]")
    first = None
    for i, p in enumerate(params):
        name = f"params[{i}]"
        if not is_cuda_array(p):
            raise TypeError(f"{name} is a CPU array but params[0] is a CUDA array; all arrays "
                            "of a call must be on one device")
        d = _core.cuda_describe(p, name)
        if d["dtype"] not in _UPDATE_DTYPES:
            raise TypeError(f"{name} has dtype {d['dtype']}; supported: {', '.join(_UPDATE_DTYPES)}")
        if first is not None and d["dtype"] != first["dtype"]:
            raise TypeError(f"{name} has dtype {d['dtype']} but params[0] has {first['dtype']}")
        if first is not None and -1 not in (d["device"], first["device"]) \
                and d["device"] != first["device"]:
            raise ValueError(f"{name} is on cuda:{d['device']} but params[0] is on "
                             f"cuda:{first['device']}; all arrays of a call must be on one device")
        if not d["contiguous"]:
            raise ValueError(f"{name} must be C-contiguous")
        if d["readonly"]:
            raise ValueError(f"{name} is read-only")
        first = first or d


def clip(grads: Sequence[Any], clipvalue: Optional[float], clipnorm: Optional[float],
         global_clipnorm: Optional[float]) -> list:
    """Keras's clipping (as Optimizer._clip) on copies of CUDA gradients (PyTorch or CuPy);
    norms are taken in float64."""
    xp = _namespace(grads[0]) if grads else None
    torch_like = bool(grads) and _module_of(grads[0]) == "torch"

    def sq_sum(g):
        return float((g.double() ** 2).sum()) if torch_like else float(xp.sum(xp.square(g, dtype=xp.float64)))

    out = [copy(g) for g in grads]
    if clipvalue is not None:
        out = [g.clamp(-clipvalue, clipvalue) if torch_like else xp.clip(g, -clipvalue, clipvalue)
               for g in out]
    if clipnorm is not None:
        for g in out:
            norm = math.sqrt(sq_sum(g))
            if norm > clipnorm:
                g *= clipnorm / norm
    if global_clipnorm is not None:
        norm = math.sqrt(sum(sq_sum(g) for g in out))
        if norm > global_clipnorm:
            for g in out:
                g *= global_clipnorm / norm
    return out


def dispatch(name: str, lists: Sequence[Tuple[str, Any]], *args: Any) -> Any:
    """``_core.<name>(*args)``, or ``_core.cuda_<name>(*args, stream=...)`` when the arrays
    of `lists` ((name, list) pairs) are CUDA arrays; mixing raises TypeError naming one."""
    if placement(lists) == "cuda":
        first = next(x for _, x in _named_arrays(lists))
        return getattr(_core, "cuda_" + name)(*args, stream=current_stream([first]))
    return getattr(_core, name)(*args)


# -- allocation on the array's own device (PyTorch, CuPy, array-API namespaces) --

def _namespace(x: Any):
    module = _module_of(x)
    if module in ("torch", "cupy"):
        return sys.modules[module]
    if hasattr(x, "__array_namespace__"):
        return x.__array_namespace__()
    raise TypeError(f"cannot allocate optimizer state like a {type(x).__module__}."
                    f"{type(x).__name__}: pass PyTorch tensors or CuPy arrays")


def zeros_like(x: Any) -> Any:
    return _namespace(x).zeros_like(x)


def full_like(x: Any, value: float) -> Any:
    return _namespace(x).full_like(x, value)


def zeros(x: Any, shape: Sequence[int]) -> Any:
    """Zeros of `shape` with x's dtype, on x's device."""
    if _module_of(x) == "torch":
        return x.new_zeros(tuple(shape))
    xp = _namespace(x)
    if _module_of(x) == "cupy":
        with xp.cuda.Device(x.device.id):
            return xp.zeros(tuple(shape), dtype=x.dtype)
    return xp.zeros(tuple(shape), dtype=x.dtype, device=x.device)


def copy(x: Any) -> Any:
    if _module_of(x) == "torch":
        return x.clone()
    return x.copy()


def to_numpy(x: Any) -> Any:
    """A host copy (float32 for bfloat16, which NumPy lacks)."""
    if _module_of(x) == "torch":
        t = x.detach()
        if str(t.dtype) == "torch.bfloat16":
            t = t.float()
        return t.cpu().numpy()
    if _module_of(x) == "cupy":
        return x.get()
    return np.asarray(x)


def copy_into(dst: Any, src: Any) -> None:
    """dst[...] = src (a host or device array), on dst's device."""
    if _module_of(dst) == "torch":
        torch = sys.modules["torch"]
        dst.copy_(torch.as_tensor(src).to(device=dst.device, dtype=dst.dtype))
        return
    xp = _namespace(dst)
    dst[...] = xp.asarray(src, dtype=dst.dtype)


def empty_like(x: Any) -> Any:
    return _namespace(x).empty_like(x)


def empty_bytes(x: Any, n: int) -> Any:
    """An uninitialized uint8 array of n bytes on x's device."""
    if _module_of(x) == "torch":
        torch = sys.modules["torch"]
        return torch.empty(n, dtype=torch.uint8, device=x.device)
    xp = _namespace(x)
    if _module_of(x) == "cupy":
        with xp.cuda.Device(x.device.id):
            return xp.empty(n, dtype=xp.uint8)
    return xp.empty(n, dtype=xp.uint8, device=x.device)


# -- dropout on CUDA arrays (fusedopt/dropout.h; masks bit-identical to the CPU engine's) --

def _noise_size(x: Any, noise_shape: Optional[Sequence[int]]) -> int:
    n = 1
    for d in (noise_shape if noise_shape is not None else tuple(x.shape)):
        n *= int(d)
    return n


def dropout(x: Any, rate: float, seed0: int, seed1: int,
            noise_shape: Optional[Sequence[int]] = None, stream: Optional[int] = None):
    """(y, packed_mask) for a CUDA array x, with the TF stateless seed words
    (seed0, seed1) as `_core.dropout` takes them; y and the mask live on x's device."""
    placement([("x", x)])
    if stream is None:
        stream = current_stream([x])
    y = empty_like(x)
    mask = empty_bytes(x, (_noise_size(x, noise_shape) + 7) // 8)
    _core.cuda_dropout(x, y, mask, rate, seed0, seed1, noise_shape, stream)
    return y, mask


def dropout_backward(dy: Any, packed_mask: Any, rate: float,
                     seed: Optional[Tuple[int, int]] = None,
                     noise_shape: Optional[Sequence[int]] = None,
                     stream: Optional[int] = None):
    """dx for a CUDA array dy, from the packed mask or regenerated from the seed words."""
    placement([("dy", dy), ("packed_mask", packed_mask)])
    if stream is None:
        stream = current_stream([dy])
    dx = empty_like(dy)
    _core.cuda_dropout_backward(dy, dx, packed_mask, rate, seed, noise_shape, stream)
    return dx


def synchronize(x: Any = None) -> None:
    """Wait for the stream that calls on x (or the legacy default stream) run on."""
    stream = current_stream([x]) if x is not None else 0
    _core.cuda_synchronize(-1, stream)
