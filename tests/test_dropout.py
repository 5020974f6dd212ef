"""Dropout (fusedopt.ops.dropout / dropout_backward) without a framework:
Philox known answers, outputs that follow their masks over shapes, rates and
noise shapes, backward from the mask and from the seed, independence from
thread count and ISA, and bad input rejected without side effects. The
comparisons with keras.random.dropout and TF are in test_dropout_tf.py."""

from __future__ import annotations

import numpy as np
import pytest

import fusedopt
from fusedopt import _core
from fusedopt.ops import dropout, dropout_backward
from registry import assert_same_bits

SEEDS = [0, 1, 42, -7, 2**31 + 5, 2**40 + 3]
SHAPES = [(1,), (7,), (64,), (1031,), (3, 5, 7), (70_001,)]  # the last spans two chunks
RATES = [0.0, 0.1, 0.5, 0.9]
DTYPES = [np.float32, np.float64]
NOISE_SHAPES = [(1, 6, 5), (4, 1, 5), (4, 6, 1), (1, 1, 5), (None, 1, 5), (5,), (6, 1), (1, 1, 1),
                (4, 1, 1), (4, 6, 5), (None, None, 1)]


def inputs(shape, dtype, seed=0) -> np.ndarray:
    """Values without zeros, so that y != 0 exactly where an element is kept."""
    rng = np.random.default_rng(seed)
    return ((rng.random(shape) + 0.5) * rng.choice([-1, 1], shape)).astype(dtype)


def unpack(mask: np.ndarray, count: int) -> np.ndarray:
    return np.unpackbits(mask, bitorder="little")[:count].astype(bool)


# -- the generator ---------------------------------------------------------------

def test_philox_known_answers():
    """Random123's kat_vectors for Philox4x32-10 (Salmon et al., SC'11)."""
    assert _core.philox4x32_10([0, 0, 0, 0], [0, 0]) == [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]
    ones = 0xFFFFFFFF
    assert _core.philox4x32_10([ones] * 4, [ones] * 2) == [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD]
    assert _core.philox4x32_10([0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344],
                               [0xA4093822, 0x299F31D0]) == [0xD16CFE09, 0x94FDCCEB, 0x5001E420,
                                                             0x24126EA1]


# -- outputs follow the mask ---------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("rate", RATES)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_output_is_the_input_scaled_where_the_mask_keeps(shape, rate, dtype):
    """y = x / (1 - rate) where the packed mask has a 1, else 0; padding bits are 0."""
    x = inputs(shape, dtype, seed=len(shape))
    n = x.size
    for seed in SEEDS[:3]:
        y, mask = dropout(x, rate, seed)
        assert y.dtype == dtype and y.shape == x.shape
        assert mask.dtype == np.uint8 and mask.shape == ((n + 7) // 8,)
        keep = unpack(mask, n).reshape(shape)
        np.testing.assert_array_equal(y != 0, keep, err_msg=f"seed {seed}")
        scale = dtype(1.0) / (dtype(1.0) - dtype(rate))
        np.testing.assert_allclose(y[keep], x[keep] * scale, rtol=4 * np.finfo(dtype).eps)
        assert np.all(np.unpackbits(mask, bitorder="little")[n:] == 0)
    if rate == 0.0:
        assert np.array_equal(y, x)


@pytest.mark.parametrize("noise_shape", NOISE_SHAPES, ids=str)
def test_noise_shape_mask_broadcasts(noise_shape):
    """One mask bit per element of the resolved noise shape, broadcast over x."""
    x = inputs((4, 6, 5), np.float32, seed=2)
    resolved = [x.shape[i] if d is None else d for i, d in enumerate(noise_shape)]
    count = int(np.prod(resolved))
    for seed in (0, 9, 2**33):
        y, mask = dropout(x, 0.4, seed, noise_shape=noise_shape)
        assert mask.shape == ((count + 7) // 8,)
        keep = unpack(mask, count).reshape(resolved)
        np.testing.assert_array_equal(np.broadcast_to(keep, x.shape), y != 0)
        dx = dropout_backward(x, mask, 0.4, noise_shape=noise_shape)
        assert_same_bits(dx, y, f"dx from the mask, seed {seed}")
        dx = dropout_backward(x, None, 0.4, seed=seed, noise_shape=noise_shape)
        assert_same_bits(dx, y, f"dx from the seed, seed {seed}")


def test_empty_and_scalar_shapes():
    y, mask = dropout(np.zeros((0, 3), np.float32), 0.5, 1)
    assert y.shape == (0, 3) and mask.shape == (0,)
    y, mask = dropout(np.array(2.0, np.float32), 0.5, 1)
    assert y.shape == () and mask.shape == (1,)
    assert float(y) in (0.0, 4.0) and (mask[0] == 1) == (float(y) == 4.0)


# -- backward ------------------------------------------------------------------------

def test_backward_with_mask_is_forward_of_dy():
    dy = inputs((70_001,), np.float32, seed=8)
    y, mask = dropout(dy, 0.6, 5)
    assert_same_bits(dropout_backward(dy, mask, 0.6), y, "dx from mask")
    assert_same_bits(dropout_backward(dy, None, 0.6, seed=5), y, "dx from seed")


# -- determinism -------------------------------------------------------------------

@pytest.mark.parametrize("noise_shape", [None, (1, 70_001), (3, 1)], ids=str)
def test_thread_count_and_isa_do_not_change_bits(noise_shape):
    x = inputs((3, 70_001), np.float32, seed=9)
    results = []
    for threads in (1, 2):
        fusedopt.set_num_threads(threads)
        for isa in _core.available_isas():
            _core.set_isa(isa)
            y, mask = dropout(x, 0.5, 123, noise_shape=noise_shape)
            dx = dropout_backward(x, None, 0.5, seed=123, noise_shape=noise_shape)
            results.append((threads, isa, y, mask, dx))
    _, _, y0, m0, d0 = results[0]
    for threads, isa, y, mask, dx in results[1:]:
        assert_same_bits(y, y0, f"y with {threads} threads on {isa}")
        assert_same_bits(mask, m0, f"mask with {threads} threads on {isa}")
        assert_same_bits(dx, d0, f"dx with {threads} threads on {isa}")


# -- bad input -----------------------------------------------------------------------

def test_bad_input_raises_and_changes_nothing():
    x = inputs((4, 6), np.float32)
    dy = inputs((4, 6), np.float32, seed=1)
    _, mask = dropout(x, 0.5, 3)
    before = [x.copy(), dy.copy(), mask.copy()]
    cases = [
        (ValueError, "rate must be in \\[0, 1\\)", lambda: dropout(x, 1.0, 3)),
        (ValueError, "rate must be in \\[0, 1\\)", lambda: dropout(x, -0.1, 3)),
        (ValueError, "rate must be finite", lambda: dropout(x, float("nan"), 3)),
        (TypeError, "rate must be a number", lambda: dropout(x, "0.5", 3)),
        (TypeError, "rate must be a number", lambda: dropout(x, True, 3)),
        (TypeError, "x has dtype int32", lambda: dropout(np.ones(4, np.int32), 0.5, 3)),
        (TypeError, "x has dtype float16", lambda: dropout(np.ones(4, np.float16), 0.5, 3)),
        (TypeError, "x must be a numpy.ndarray", lambda: dropout([1.0, 2.0], 0.5, 3)),
        (ValueError, "x must be C-contiguous", lambda: dropout(x[:, ::2], 0.5, 3)),
        (TypeError, "seed must be an int or a pair", lambda: dropout(x, 0.5, None)),
        (TypeError, "seed must be an int or a pair", lambda: dropout(x, 0.5, 1.5)),
        (TypeError, "seed must be an int or a pair", lambda: dropout(x, 0.5, "3")),
        (TypeError, "seed\\[1\\] must be an int", lambda: dropout(x, 0.5, (1, 2.0))),
        (ValueError, "pair of ints, got 3 values", lambda: dropout(x, 0.5, (1, 2, 3))),
        (ValueError, "seed must fit in int64", lambda: dropout(x, 0.5, 2**64)),
        (ValueError, "does not broadcast", lambda: dropout(x, 0.5, 3, noise_shape=(4, 5))),
        (ValueError, "does not broadcast", lambda: dropout(x, 0.5, 3, noise_shape=(1, 4, 6))),
        (ValueError, "does not broadcast", lambda: dropout(x, 0.5, 3, noise_shape=(4,))),
        (ValueError, "does not broadcast", lambda: dropout(x, 0.5, 3, noise_shape=(-1, 6))),
        (TypeError, "noise_shape\\[0\\] must be an int", lambda: dropout(x, 0.5, 3, noise_shape=(4.0, 6))),
        (TypeError, "noise_shape must be a tuple", lambda: dropout(x, 0.5, 3, noise_shape=4)),
        (ValueError, "exactly one of packed_mask", lambda: dropout_backward(dy, None, 0.5)),
        (ValueError, "exactly one of packed_mask", lambda: dropout_backward(dy, mask, 0.5, seed=3)),
        (ValueError, "packed_mask has shape", lambda: dropout_backward(dy, mask[:2].copy(), 0.5)),
        (ValueError, "packed_mask has shape", lambda: dropout_backward(dy, mask, 0.5, noise_shape=(1, 6))),
        (TypeError, "packed_mask has dtype", lambda: dropout_backward(dy, mask.astype(np.int8), 0.5)),
        (ValueError, "rate must be in", lambda: dropout_backward(dy, mask, 1.5)),
        (TypeError, "dy has dtype", lambda: dropout_backward(dy.astype(np.int64), mask, 0.5)),
    ]
    for exc, match, call in cases:
        with pytest.raises(exc, match=match):
            call()
        for a, b in zip([x, dy, mask], before):
            assert_same_bits(a, b, f"after rejected call ({match})")


def test_int_too_large_for_a_double_is_a_value_error():
    """Regression (found by tests/fuzz/fuzz_regularizers_dropout.py): float()
    of such a rate raised OverflowError (neither TypeError nor ValueError,
    naming no argument) from dropout and dropout_backward."""
    x = inputs((5,), np.float32)
    before = x.copy()
    with pytest.raises(ValueError, match="rate must be finite"):
        dropout(x, 10**400, 3)
    with pytest.raises(ValueError, match="rate must be finite"):
        dropout_backward(x, None, -(10**400), seed=3)
    assert_same_bits(x, before, "x")
