"""Dropout against TensorFlow (fusedopt.ops.dropout / dropout_backward): TF's
seed -> (key, counter) mapping, outputs and masks bit-identical to
keras.random.dropout (TF backend, CPU) over seeds, shapes, rates, dtypes and
noise shapes, and gradients equal to TF's. What needs no framework (Philox
known answers, thread count and ISA, bad input) is in test_dropout.py."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from fusedopt import _core
from fusedopt._dropout import tf_seed
from fusedopt.ops import dropout, dropout_backward
from registry import assert_same_bits
from test_dropout import DTYPES, NOISE_SHAPES, RATES, SEEDS, SHAPES, inputs, unpack


def keras_dropout(x, rate, seed, noise_shape=None) -> np.ndarray:
    return np.asarray(keras.random.dropout(x, rate, noise_shape=noise_shape, seed=seed))


# -- seeds -------------------------------------------------------------------------

@pytest.mark.parametrize("pair", [(0, 0), (1, 0), (12345, 678), (-5, 7), (2**31 - 1, -1),
                                  (-(2**63), 2**63 - 1)])
def test_seed_pair_maps_to_tf_key_and_counter(pair):
    key, counter = tf.raw_ops.StatelessRandomGetKeyCounter(seed=tf.constant(pair, tf.int64))
    ours_key, ours_counter = _core.dropout_stream(*(v & (2**64 - 1) for v in pair))
    assert int(key.numpy()[0]) == ours_key[0] | ours_key[1] << 32
    c = [int(v) for v in counter.numpy()]
    assert c == [ours_counter[0] | ours_counter[1] << 32, ours_counter[2] | ours_counter[3] << 32]


def test_keras_int_seed_mapping():
    """keras.random.dropout(seed=S): draw_seed gives int64 [S, 0], _cast_seed
    takes floormod(., 2**31 - 2)."""
    assert tf_seed(5) == (5, 0)
    assert tf_seed(-7) == (2**31 - 2 - 7, 0)
    assert tf_seed(2**31 - 2) == (0, 0)
    assert tf_seed((3, -4)) == (3, -4)
    x = inputs((1031,), np.float32)
    for s in (-7, 2**31 + 5):
        y, _ = dropout(x, 0.5, (tf_seed(s)[0], 0))
        assert_same_bits(y, keras_dropout(x, 0.5, s), f"seed {s} as a pair")


@pytest.mark.parametrize("pair", [(3, 9), (-1, 2**40)])
def test_pair_seed_is_tf_stateless_dropout(pair):
    x = inputs((4, 257), np.float32)
    expected = tf.nn.experimental.stateless_dropout(x, 0.3, seed=tf.constant(pair, tf.int64)).numpy()
    assert_same_bits(dropout(x, 0.3, pair)[0], expected, "pair seed")


# -- forward against keras.random.dropout -----------------------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("rate", RATES)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_matches_keras_random_dropout_bitwise(shape, rate, dtype):
    x = inputs(shape, dtype, seed=len(shape))
    n = x.size
    for seed in SEEDS:
        y, mask = dropout(x, rate, seed)
        expected = keras_dropout(x, rate, seed)
        assert_same_bits(y, expected, f"seed {seed}")
        assert mask.dtype == np.uint8 and mask.shape == ((n + 7) // 8,)
        np.testing.assert_array_equal(unpack(mask, n), expected.ravel() != 0, err_msg=f"mask, seed {seed}")
        assert np.all(np.unpackbits(mask, bitorder="little")[n:] == 0)  # padding bits
    if rate == 0.0:
        assert np.all(unpack(mask, n)) and np.array_equal(y, x)
    else:  # the kept fraction is about 1 - rate
        kept = np.mean(unpack(dropout(inputs((70_001,), dtype), rate, 3)[1], 70_001))
        assert abs(kept - (1 - rate)) < 0.01


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("noise_shape", NOISE_SHAPES, ids=str)
def test_noise_shape_matches_keras(noise_shape, dtype):
    x = inputs((4, 6, 5), dtype, seed=2)
    resolved = [x.shape[i] if d is None else d for i, d in enumerate(noise_shape)]
    count = int(np.prod(resolved))
    for seed in (0, 9, 2**33):
        y, mask = dropout(x, 0.4, seed, noise_shape=noise_shape)
        assert_same_bits(y, keras_dropout(x, 0.4, seed, noise_shape), f"seed {seed}")
        assert mask.shape == ((count + 7) // 8,)
        keep = unpack(mask, count).reshape(resolved)
        np.testing.assert_array_equal(np.broadcast_to(keep, x.shape), y != 0)


@pytest.mark.parametrize("shape,noise_shape", [((3, 70_001), (1, 70_001)), ((3, 70_001), (3, 1)),
                                               ((2, 300, 257), (2, 1, 257)), ((5, 2, 7), (5, 1, 1))],
                         ids=str)
def test_large_noise_shapes_match_keras(shape, noise_shape):
    x = inputs(shape, np.float32, seed=4)
    y, mask = dropout(x, 0.25, 77, noise_shape=noise_shape)
    assert_same_bits(y, keras_dropout(x, 0.25, 77, noise_shape), "large noise shape")


# -- backward ------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("noise_shape", [None, (1, 257), (3, 1)], ids=str)
def test_backward_matches_tf_gradient_from_mask_and_from_seed(noise_shape, dtype):
    x = inputs((3, 257), dtype, seed=5)
    dy = inputs((3, 257), dtype, seed=6)
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        out = keras.random.dropout(xt, 0.3, noise_shape=noise_shape, seed=11)
    expected = tape.gradient(out, xt, output_gradients=tf.constant(dy)).numpy()
    _, mask = dropout(x, 0.3, 11, noise_shape=noise_shape)
    from_mask = dropout_backward(dy, mask, 0.3, noise_shape=noise_shape)
    from_seed = dropout_backward(dy, None, 0.3, seed=11, noise_shape=noise_shape)
    assert_same_bits(from_mask, expected, "dx from the packed mask")
    assert_same_bits(from_seed, expected, "dx regenerated from the seed")


def test_scalar_input_matches_keras():
    x = np.array(2.0, np.float32)
    assert_same_bits(dropout(x, 0.5, 1)[0], keras_dropout(x, 0.5, 1), "0-d")
