r"""L2-SP: weight decay toward the pretrained weights, attached to a Keras model in one call.

Li, Grandvalet & Davoine, "Explicit Inductive Bias for Transfer Learning with
Convolutional Networks", ICML 2018 (eq. 3). For the variables ``w_S`` that
have pretrained values ``w0`` and the new variables ``w_new`` (e.g. a new
classifier head):

.. math::

    \Omega(w) = \frac{\alpha}{2}\,\lVert w_S - w^0_S \rVert_2^2
              + \frac{\beta}{2}\,\lVert w_\mathrm{new} \rVert_2^2

    \nabla_{w_S}\Omega = \alpha\,(w_S - w^0_S), \qquad
    \nabla_{w_\mathrm{new}}\Omega = \beta\,w_\mathrm{new}

(the paper's ``alpha/2`` convention; Keras's ``L2(l2)`` is ``l2 * sum w^2``,
so the new-variable term equals ``keras.regularizers.L2(beta / 2)``).

:func:`attach_l2sp` sets each variable's ``regularizer`` (Keras adds
``variable.regularizer(variable)`` of every *trainable* variable to the loss),
so frozen variables cost nothing and the penalty follows
:func:`fusedopt.training.freeze` / ``unfreeze``. ``w0`` is a snapshot taken
at attach time.

Each variable's penalty is a ``fusedopt.keras.regularizers.L2SP``: on the
TensorFlow backend one fused op for the penalty and one for its gradient
(C++ kernels), elsewhere the same formula in ``keras.ops``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import keras
import numpy as np
from keras import ops

from fusedopt.keras.regularizers import L2SP
from fusedopt.training.transfer import _all_layers

__all__ = ["attach_l2sp", "detach_l2sp", "L2SPAttachment"]


@dataclass(frozen=True)
class L2SPAttachment:
    """What :func:`attach_l2sp` did: variable paths per term, coefficients, implementation."""

    pretrained: tuple[str, ...]  # alpha/2 * ||w - w0||^2
    new: tuple[str, ...]  # beta/2 * ||w||^2
    alpha: float
    beta: float
    implementation: str


class _Attached(keras.regularizers.Regularizer):
    """A variable's regularizer after :func:`attach_l2sp`: L2-SP plus its own regularizer, if any."""

    def __init__(self, l2sp: Callable[[Any], Any], original: Callable[[Any], Any] | None) -> None:
        self.l2sp = l2sp
        self.original = original

    def __call__(self, x: Any) -> Any:
        out = self.l2sp(x)
        if self.original is not None:
            out = ops.add(out, ops.cast(self.original(x), out.dtype))
        return out

    def get_config(self) -> dict[str, Any]:  # not serialized: a training-time penalty
        return {}


def _check_coefficient(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    x = float(value)
    if not math.isfinite(x) or x < 0:
        raise ValueError(f"{name} must be finite and >= 0, got {x}")
    return x


def _trainable_kind(model: keras.layers.Layer) -> list[Any]:
    """Variables created trainable (BatchNorm moving statistics excluded), frozen or not."""
    ids = set()
    for layer in _all_layers(model):
        own = getattr(layer, "_trainable_variables", None)
        if own is None:  # pragma: no cover - Keras internals changed
            return [v for v in model.weights if v.trainable]
        ids.update(id(v) for v in own)
    return [v for v in model.weights if id(v) in ids]


def _reference_values(model: keras.layers.Layer, reference: Any) -> dict[int, np.ndarray]:
    """Map id(model variable) -> pretrained value (a copy taken now)."""
    model_vars = list(model.weights)
    by_id = {id(v): v for v in model_vars}
    by_path: dict[str, list[Any]] = {}
    for v in model_vars:
        by_path.setdefault(v.path, []).append(v)

    def by_key(key: Any, where: str) -> Any:
        if isinstance(key, keras.Variable) and id(key) in by_id:
            return key
        path = key.path if isinstance(key, keras.Variable) else key
        if not isinstance(path, str):
            raise TypeError(f"{where}: keys must be variable paths or variables, got {type(key).__name__}")
        found = by_path.get(path, [])
        if len(found) > 1:
            raise ValueError(f"{where}: several model variables have the path {path!r}")
        return found[0] if found else None

    values: dict[int, np.ndarray] = {}
    if isinstance(reference, keras.layers.Layer):
        for ref in reference.weights:
            target = by_key(ref, "reference")
            if target is not None:
                values[id(target)] = np.array(ref.numpy(), copy=True)
        if not values:
            raise ValueError("no variable of the reference model is in the model (by identity or path)")
    elif isinstance(reference, Mapping):
        for key, value in reference.items():
            target = by_key(key, "reference")
            if target is None:
                raise ValueError(f"reference: no model variable has the path {key!r}")
            values[id(target)] = np.array(value, copy=True)
    elif isinstance(reference, Sequence) and not isinstance(reference, str):
        if len(reference) != len(model_vars):
            raise ValueError(f"reference has {len(reference)} arrays but the model has {len(model_vars)} "
                             "weights (a list must be aligned with model.weights, as model.get_weights())")
        for v, value in zip(model_vars, reference):
            values[id(v)] = np.array(value, copy=True)
    else:
        raise TypeError("reference must be a keras model/layer, a mapping path -> array, or a list "
                        f"aligned with model.weights; got {type(reference).__name__}")
    for v in model_vars:
        if id(v) in values and tuple(values[id(v)].shape) != tuple(v.shape):
            raise ValueError(f"reference for {v.path!r} has shape {values[id(v)].shape}, expected {tuple(v.shape)}")
    return values


def attach_l2sp(model: keras.Model, reference: Any, alpha: float, beta: float) -> L2SPAttachment:
    r"""Add L2-SP to ``model``'s loss: ``alpha/2 ||w_S - w0||^2 + beta/2 ||w_new||^2``.

    ``reference`` gives ``w0``: a Keras model or layer (its variables are
    matched to the model's by identity, e.g. the pretrained base inside the
    fine-tuning model, else by path; values are copied now), a mapping
    ``variable path -> array``, or a list of arrays aligned with
    ``model.weights`` (``pretrained.get_weights()`` of the same
    architecture). Every other variable created trainable (BatchNorm moving
    statistics excluded) is "new" and gets ``beta/2 ||w||^2``
    (``beta=0``: none).

    The penalty is the variables' ``regularizer`` (added to any regularizer
    they already have), so it enters ``model.fit`` like ``kernel_regularizer``
    does, only for variables that are trainable at the time: attach once,
    before or after freezing. Calling it again replaces the previous L2-SP;
    :func:`detach_l2sp` removes it. It is not saved with the model.

    Gradient: ``alpha * (w - w0)`` for pretrained variables and
    ``beta * w`` for new ones. Reference: Li, Grandvalet & Davoine, ICML 2018.

    Example::

        model = transfer_model(base, keras.layers.Dense(5))
        info = attach_l2sp(model, base, alpha=0.1, beta=0.01)
    """
    alpha = _check_coefficient(alpha, "alpha")
    beta = _check_coefficient(beta, "beta")
    if not model.weights:
        raise ValueError("the model has no variables: build it first")
    values = _reference_values(model, reference)
    detach_l2sp(model)
    pretrained: list[str] = []
    new: list[str] = []
    implementation = ""
    for v in _trainable_kind(model):
        if id(v) in values:
            reg = L2SP(reference=values[id(v)], alpha=alpha)
            pretrained.append(v.path)
        elif beta > 0:
            reg = L2SP(beta=beta)
            new.append(v.path)
        else:
            continue
        implementation = type(reg).__module__ + "." + type(reg).__qualname__
        v.regularizer = _Attached(reg, v.regularizer)
    if not pretrained:
        raise ValueError("no trainable variable of the model has a reference value")
    return L2SPAttachment(tuple(pretrained), tuple(new), alpha, beta, implementation)


def detach_l2sp(model: keras.Model) -> int:
    """Remove what :func:`attach_l2sp` added (variables keep their own regularizers); return the count."""
    count = 0
    for v in model.weights:
        reg = v.regularizer
        if isinstance(reg, _Attached):
            v.regularizer = reg.original
            count += 1
    return count
