"""Dropout over NumPy arrays with bit-packed masks, bit-identical to
``keras.random.dropout`` on the TensorFlow backend (re-exported by `fusedopt.ops`)."""

from __future__ import annotations

import numbers
from typing import Any, Optional, Sequence, Tuple, Union

import numpy as np

from fusedopt import _core, _cuda
from fusedopt._arrays import as_array

Seed = Union[int, Tuple[int, int]]
NoiseShape = Optional[Sequence[Optional[int]]]

# keras.src.backend.tensorflow.random._cast_seed: floormod(seed, tf.int32.max - 1).
_KERAS_SEED_MODULUS = 2**31 - 2
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def _int64(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    v = int(value)
    if not _INT64_MIN <= v <= _INT64_MAX:
        raise ValueError(f"{name} must fit in int64, got {v}")
    return v


def tf_seed(seed: Seed) -> Tuple[int, int]:
    """The TensorFlow stateless seed pair that `seed` stands for.

    - An int ``S`` is Keras's seed: ``keras.random.dropout(x, rate, seed=S)``
      draws ``[S, 0]`` as int64 (``draw_seed``) and casts it with
      ``floormod(., 2**31 - 2)`` (``_cast_seed``), so the pair is
      ``(S % 2147483646, 0)`` (Python's ``%``: never negative).
    - A pair ``(a, b)`` is a TF stateless seed, used as is, as
      ``tf.random.stateless_uniform(..., seed=[a, b])`` and
      ``tf.nn.experimental.stateless_dropout(..., seed=[a, b])`` take it (a
      ``keras.random.SeedGenerator`` draw after Keras's cast is such a pair).
    """
    if isinstance(seed, (tuple, list)):
        if len(seed) != 2:
            raise ValueError(f"seed must be an int or a pair of ints, got {len(seed)} values")
        return _int64(seed[0], "seed[0]"), _int64(seed[1], "seed[1]")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed must be an int or a pair of ints, got {type(seed).__name__}")
    return _int64(seed, "seed") % _KERAS_SEED_MODULUS, 0


def _seed_words(seed: Seed) -> Tuple[int, int]:
    """The pair as TF's kernels read it: each value widened to uint64."""
    a, b = tf_seed(seed)
    return a & (2**64 - 1), b & (2**64 - 1)


def _check_rate(rate: Any) -> float:
    if isinstance(rate, bool) or not isinstance(rate, numbers.Real):
        raise TypeError(f"rate must be a number, got {type(rate).__name__}")
    try:
        return float(rate)  # the range [0, 1) is checked by the engine
    except OverflowError:  # an int too large for a double
        raise ValueError(f"rate must be finite, got an int of {int(rate).bit_length()} bits") from None


def _noise_shape(x: Any, noise_shape: NoiseShape) -> Optional[list]:
    """Keras's convention: a None entry i takes x's size in dim i."""
    if noise_shape is None:
        return None
    if not isinstance(noise_shape, (tuple, list)):
        raise TypeError(f"noise_shape must be a tuple of ints, got {type(noise_shape).__name__}")
    shape = getattr(x, "shape", ())
    out = []
    for i, d in enumerate(noise_shape):
        if d is None:
            if i >= len(shape):
                raise ValueError(f"noise_shape[{i}] is None but x has only {len(shape)} dims")
            d = shape[i]
        out.append(_int64(d, f"noise_shape[{i}]"))
    return out


def dropout(x: Any, rate: float, seed: Seed, noise_shape: NoiseShape = None
            ) -> Tuple[np.ndarray, np.ndarray]:
    r"""Dropout (Srivastava et al., JMLR 2014): ``(y, packed_mask)``.

    .. math::
        u_j \sim U[0, 1) \text{ (Philox4x32-10 stream of the seed)},\quad
        \text{keep}_j = u_j \ge \text{rate},\quad
        y = \text{keep} \cdot x \cdot \mathrm{T}(1 / (1 - \text{rate}))

    ``keep`` is drawn over `noise_shape` (default: x's shape) and broadcast
    over x, as ``tf.nn.experimental.stateless_dropout``; `u` and the
    comparison are in x's dtype. The result is bit-identical to
    ``keras.random.dropout(x, rate, noise_shape, seed=seed)`` on the
    TensorFlow backend, on CPU (``rate=0`` included). See `tf_seed` for what
    `seed` means: an int is Keras's seed, a pair a TF stateless seed.

    ``packed_mask`` is a uint8 array of ``ceil(m / 8)`` bytes for the ``m``
    elements of the noise shape; element j is bit ``j % 8`` of byte ``j // 8``
    (``np.unpackbits(mask, bitorder="little")[:m]``). Keep it for
    `dropout_backward`, or keep only the seed and regenerate it there.

    Args:
        x: C-contiguous float32 or float64 array (or DLPack CPU tensor).
        rate: probability of dropping an element, in [0, 1).
        seed: int (Keras's) or pair of ints (TF's stateless seed).
        noise_shape: shape broadcasting to x's (right-aligned; each entry 1 or
            x's size); a None entry i takes x's size in dim i, as in Keras.

    Example::

        y, mask = fusedopt.ops.dropout(x, 0.5, seed=7)
        # == keras.random.dropout(x, 0.5, seed=7)  (TF backend)
        dx = fusedopt.ops.dropout_backward(dy, mask, 0.5)

    Reference for the generator: Salmon et al., "Parallel random numbers: as
    easy as 1, 2, 3", SC'11.
    """
    x = as_array(x, "x")
    s0, s1 = _seed_words(seed)
    if _cuda.is_cuda_array(x):  # the same masks from the CUDA kernels, on x's device
        return _cuda.dropout(x, _check_rate(rate), s0, s1, _noise_shape(x, noise_shape))
    return _core.dropout(x, _check_rate(rate), s0, s1, _noise_shape(x, noise_shape))


def dropout_backward(dy: Any, packed_mask: Optional[np.ndarray], rate: float,
                     seed: Optional[Seed] = None, noise_shape: NoiseShape = None) -> np.ndarray:
    r"""The gradient of `dropout`: ``dx = keep * dy * T(1 / (1 - rate))``.

    ``keep`` comes from `packed_mask` (as returned by `dropout`) or, with
    ``packed_mask=None``, is regenerated from `seed` (1 bit or 0 bits kept per
    element, against the 1-byte bool mask TensorFlow keeps). Pass exactly one
    of the two, and the `rate` and `noise_shape` of the forward call.
    """
    dy = as_array(dy, "dy")
    words = None if seed is None else _seed_words(seed)
    mask = None if packed_mask is None else as_array(packed_mask, "packed_mask")
    if _cuda.is_cuda_array(dy):
        return _cuda.dropout_backward(dy, mask, _check_rate(rate), words,
                                      _noise_shape(dy, noise_shape))
    return _core.dropout_backward(dy, mask, _check_rate(rate), words, _noise_shape(dy, noise_shape))


__all__ = ["dropout", "dropout_backward", "tf_seed"]
