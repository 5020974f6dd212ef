r"""Keras weight regularizers whose penalty and gradient are fused C++ kernels.

Drop-ins for ``keras.regularizers.L1``, ``L2`` and ``L1L2`` (same penalty
values, arguments, ``get_config`` and string ids), plus ``L2SP``, usable as
``kernel_regularizer=``::

    from fusedopt.keras import regularizers
    keras.layers.Dense(64, kernel_regularizer=regularizers.L2(1e-4))

Keras's conventions (``fusedopt/regularizers.h``):

.. math::
    R_{L1L2}(w) = l_1 \sum |w| + l_2 \sum w^2, \qquad
    \nabla R_{L1L2} = l_1\,\mathrm{sign}(w) + 2 l_2 w

On the TensorFlow backend (outside XLA, float32/float64) the penalty is one
custom op (``FusedoptElasticPenalty``, sums accumulated in double) whose
registered gradient is another (``FusedoptElasticGradient``): one
multi-threaded pass each, instead of TF's abs/square/sum graph and its
gradient. Elsewhere the built-in's ``keras.ops`` math runs.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

from fusedopt.keras import _op_library
from fusedopt.optimizers import _check_number as check_number

__all__ = ["L1", "L2", "L1L2", "L2SP", "l1", "l2", "l1_l2", "l2sp", "get"]

def _elastic_penalty(x: Any, l1: float, l2: float, keras_penalty: Any) -> Any:
    module = _op_library.module_for(x) if (l1 or l2) else None  # all 0: Keras's constant 0 (no gradient)
    if module is None:
        return keras_penalty(x)
    import tensorflow as tf

    value = _op_library.tf_value(x)
    # Keras's ops.cast(l, x.dtype) rounds a Python float to float32 first on
    # TensorFlow, float64 variables included: use the same strengths.
    l1, l2 = (tf.constant(float(np.float32(v)), tf.float64) for v in (l1, l2))
    return module.fusedopt_elastic_penalty(x=value, l1=l1, l2=l2)


@keras.saving.register_keras_serializable(package="fusedopt")
class L1L2(keras.regularizers.L1L2):
    __doc__ = keras.regularizers.L1L2.__doc__

    def __call__(self, x):
        return _elastic_penalty(x, self.l1, self.l2, super().__call__)


@keras.saving.register_keras_serializable(package="fusedopt")
class L1(keras.regularizers.L1):
    __doc__ = keras.regularizers.L1.__doc__

    def __call__(self, x):
        return _elastic_penalty(x, self.l1, 0.0, super().__call__)


@keras.saving.register_keras_serializable(package="fusedopt")
class L2(keras.regularizers.L2):
    __doc__ = keras.regularizers.L2.__doc__

    def __call__(self, x):
        return _elastic_penalty(x, 0.0, self.l2, super().__call__)


@keras.saving.register_keras_serializable(package="fusedopt")
class L2SP(keras.regularizers.Regularizer):
    r"""L2-SP: an L2 penalty toward pretrained weights (Li, Grandvalet & Davoine,
    "Explicit Inductive Bias for Transfer Learning with Convolutional
    Networks", ICML 2018, eq. 3).

    .. math::
        R(w) = \frac{\alpha}{2} \lVert w - w^0 \rVert^2 \text{ (pretrained: reference } w^0\text{)},
        \qquad R(w) = \frac{\beta}{2} \lVert w \rVert^2 \text{ (new: reference None)}

    with gradients :math:`\alpha (w - w^0)` and :math:`\beta w`. Factor of 2:
    this is the paper's convention (``alpha/2``, so the gradient is
    ``alpha * (w - w0)``); Keras's ``L2(l2)`` is ``l2 * sum w^2``, so the
    new-variable term equals ``keras.regularizers.L2(beta / 2)``.

    Args:
        reference: the pretrained value ``w0`` of the variable this
            regularizes (an array of its shape), or None for a new variable.
        alpha: strength toward ``w0`` (used when `reference` is given).
        beta: strength toward 0 (used when `reference` is None).

    Example::

        w0 = base.get_layer("dense").kernel.numpy()
        layer.kernel_regularizer = L2SP(reference=w0, alpha=0.01)

    ``fusedopt.training.attach_l2sp`` attaches it to every variable of a model.
    The reference is held as a non-trainable variable (captured by handle in
    a traced train step, not copied into the graph) and saved in the config.
    """

    def __init__(self, reference: Any = None, alpha: float = 0.01, beta: float = 0.01) -> None:
        self.alpha = check_number(alpha, "alpha", low=0.0)
        self.beta = check_number(beta, "beta", low=0.0)
        if reference is not None:
            reference = np.asarray(reference)
            if not np.issubdtype(reference.dtype, np.floating):
                raise TypeError(f"reference must be a float array, got dtype {reference.dtype}")
            reference = keras.Variable(reference, trainable=False, name="l2sp_reference")
        self.reference = reference

    def __call__(self, x):
        if self.reference is not None and tuple(self.reference.shape) != tuple(x.shape):
            raise ValueError(f"L2SP: reference has shape {tuple(self.reference.shape)} but the "
                             f"variable has shape {tuple(x.shape)}")
        coefficient = self.alpha if self.reference is not None else self.beta
        module = _op_library.module_for(x)
        if module is None:
            d = x if self.reference is None else x - keras.ops.cast(self.reference, x.dtype)
            return keras.ops.cast(0.5 * coefficient, x.dtype) * keras.ops.sum(keras.ops.square(d))
        import tensorflow as tf

        value = _op_library.tf_value(x)
        reference = (tf.zeros_like(value) if self.reference is None
                     else tf.cast(self.reference.value, value.dtype))
        return module.fusedopt_sp_penalty(x=value, reference=reference,
                                          alpha=tf.constant(coefficient, tf.float64))

    def get_config(self) -> dict[str, Any]:
        reference = None if self.reference is None else np.asarray(self.reference.numpy()).tolist()
        return {"reference": reference, "alpha": self.alpha, "beta": self.beta}


# Keras's string ids and lowercase aliases.
l1, l2, l1_l2, l2sp = L1, L2, L1L2, L2SP
_BY_NAME = {"l1": L1, "l2": L2, "l1_l2": L1L2, "l1l2": L1L2, "l2sp": L2SP,
            "L1": L1, "L2": L2, "L1L2": L1L2, "L2SP": L2SP}


def get(identifier: Any) -> Any:
    """A regularizer from a string id (``"l1"``, ``"l2"``, ``"l1_l2"``, ``"l2sp"``),
    a config dict, a callable or None, as ``keras.regularizers.get`` (fusedopt's classes)."""
    if identifier is None or callable(identifier):
        return identifier
    if isinstance(identifier, str):
        if identifier not in _BY_NAME:
            raise ValueError(f"unknown regularizer {identifier!r}; valid: {', '.join(sorted(_BY_NAME))}")
        return _BY_NAME[identifier]()
    if isinstance(identifier, dict):
        return keras.saving.deserialize_keras_object(
            identifier, custom_objects={c.__name__: c for c in (L1, L2, L1L2, L2SP)})
    raise ValueError(f"could not interpret regularizer identifier: {identifier!r}")
