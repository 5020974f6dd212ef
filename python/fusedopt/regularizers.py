r"""Weight regularizers over NumPy arrays, computed by the multi-threaded C++ engine.

Every function takes one array or a list of arrays (float32/float64,
C-contiguous; DLPack CPU tensors too); a penalty over a list is the sum of the
per-array penalties. Sums are taken in double over a fixed chunking, so every
result is the same for any thread count. The math is written once, in
``fusedopt/include/fusedopt/regularizers.h``.

L1/L2, in Keras's convention (``keras.regularizers.L1``, ``L2``, ``L1L2``):

.. math::
    R(w) = l_1 \sum |w| + l_2 \sum w^2,\qquad
    \nabla R = l_1\,\mathrm{sign}(w) + 2 l_2 w \quad(\mathrm{sign}(0) = 0)

Proximal step (FOBOS, Duchi & Singer, JMLR 2009; TF's
``ApplyProximalGradientDescent``), which gives exact zeros:

.. math::
    v = w - \eta g,\qquad w \leftarrow \mathrm{sign}(v)\max(|v| - \eta l_1, 0) / (1 + \eta l_2)

L2-SP (Li, Grandvalet & Davoine, ICML 2018), for pretrained weights ``w`` with
starting point ``w0`` and new weights (``w0`` None):

.. math::
    R = \tfrac{\alpha}{2}\|w - w_0\|^2 + \tfrac{\beta}{2}\|w_{new}\|^2,\qquad
    \nabla R = \alpha (w - w_0),\ \beta w_{new}

The factor 1/2 is the paper's: the gradient is ``alpha * (w - w0)``. In Keras's
L2 convention the new-weights term is ``keras.regularizers.L2(beta / 2)``.

Example::

    import numpy as np, fusedopt.regularizers as R
    w = np.array([-2.0, 0.0, 3.0], np.float32)
    R.l1l2_penalty(w, l1=0.1, l2=0.01)      # 0.1 * 5 + 0.01 * 13 = 0.63
    R.l1l2_gradient(w, l1=0.1, l2=0.01)     # [-0.14, 0., 0.16]
"""

from __future__ import annotations

from typing import Any, Optional, Sequence, Tuple, Union

import numpy as np

from fusedopt import _cuda
from fusedopt._arrays import as_array

ArrayOrList = Union[np.ndarray, Sequence[np.ndarray]]

__all__ = ["l1l2_penalty", "l1l2_gradient", "proximal_step_", "l2sp_penalty", "l2sp_gradient"]


def _listed(x: Any, name: str, allow_none: bool = False) -> Tuple[list, bool]:
    """(list of arrays, whether `x` was a single array)."""
    if isinstance(x, (list, tuple)):
        return [None if (allow_none and a is None) else as_array(a, f"{name}[{i}]")
                for i, a in enumerate(x)], False
    return [None if (allow_none and x is None) else as_array(x, name)], True


def _starting_points(w0: Any, single: bool) -> list:
    """L2-SP's w0 as a list; None (or a None entry) marks a new weight."""
    if single:
        return [None if w0 is None else as_array(w0, "w0")]
    if not isinstance(w0, (list, tuple)):
        raise TypeError(f"w0 must be a list (with None for new weights) when w is a list, "
                        f"got {type(w0).__name__}")
    return _listed(w0, "w0", allow_none=True)[0]


def _outputs(w: list, out: Any, single: bool) -> list:
    if out is None:
        return [np.empty_like(a) if isinstance(a, np.ndarray)
                else _cuda.empty_like(a) if _cuda.is_cuda_array(a) else a for a in w]
    outs, out_single = _listed(out, "out")
    if out_single != single:
        raise TypeError("out must be an array when w is one, and a list when w is a list")
    return outs


def l1l2_penalty(w: ArrayOrList, l1: float = 0.0, l2: float = 0.0) -> float:
    """``l1 * sum|w| + l2 * sum w^2`` (summed over a list), as ``keras.regularizers.L1L2``."""
    ws = _listed(w, "w")[0]
    return _cuda.dispatch("l1l2_penalty", [("w", ws)], ws, l1, l2)


def l1l2_gradient(w: ArrayOrList, l1: float = 0.0, l2: float = 0.0,
                  out: Optional[ArrayOrList] = None) -> ArrayOrList:
    """``l1 * sign(w) + 2 * l2 * w`` (``sign(0) = 0``), into `out` (new arrays by default)."""
    ws, single = _listed(w, "w")
    outs = _outputs(ws, out, single)
    _cuda.dispatch("l1l2_gradient", [("w", ws), ("out", outs)], ws, outs, l1, l2)
    return outs[0] if single else outs


def proximal_step_(w: ArrayOrList, g: ArrayOrList, learning_rate: float, l1: float = 0.0,
                   l2: float = 0.0) -> None:
    """In place: ``v = w - lr*g; w = sign(v) * max(|v| - lr*l1, 0) / (1 + lr*l2)``.

    Elements with ``|v| <= lr*l1`` become exactly 0.
    """
    ws, single = _listed(w, "w")
    gs, g_single = _listed(g, "g")
    if g_single != single:
        raise TypeError("g must be an array when w is one, and a list when w is a list")
    _cuda.dispatch("proximal_step", [("w", ws), ("g", gs)], ws, gs, learning_rate, l1, l2)


def l2sp_penalty(w: ArrayOrList, w0: Any, alpha: float, beta: float = 0.0) -> float:
    """``alpha/2 * ||w - w0||^2``, or ``beta/2 * ||w||^2`` where `w0` (or its entry) is None."""
    ws, single = _listed(w, "w")
    w0s = _starting_points(w0, single)
    return _cuda.dispatch("l2sp_penalty", [("w", ws), ("w0", w0s)], ws, w0s, alpha, beta)


def l2sp_gradient(w: ArrayOrList, w0: Any, alpha: float, beta: float = 0.0,
                  out: Optional[ArrayOrList] = None) -> ArrayOrList:
    """``alpha * (w - w0)``, or ``beta * w`` where `w0` (or its entry) is None; into `out`."""
    ws, single = _listed(w, "w")
    outs = _outputs(ws, out, single)
    w0s = _starting_points(w0, single)
    _cuda.dispatch("l2sp_gradient", [("w", ws), ("w0", w0s), ("out", outs)], ws, w0s, outs,
                   alpha, beta)
    return outs[0] if single else outs
