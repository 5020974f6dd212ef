"""Regularizers (fusedopt.regularizers) and the fused proximal_l1= against
Keras / TensorFlow: keras.regularizers' penalties with tf.GradientTape's
gradients, and TF's ResourceApplyProximalGradientDescent. The formulas and
the fused l1= / l2= / proximal_l1= of every rule without a framework are in
test_regularizers.py."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

import fusedopt
import fusedopt.regularizers as R
from registry import NUM_STEPS, assert_same_bits
from test_regularizers import SHAPES, seed_of, weights

# -- L1 / L2 / L1L2 against keras.regularizers and tf.GradientTape ------------

KERAS_REGULARIZERS = [
    ("L1", {"l1": 0.01}),
    ("L2", {"l2": 0.02}),
    ("L1L2", {"l1": 0.003, "l2": 0.05}),
]


def keras_penalty_and_gradient(name, kwargs, w):
    var = tf.Variable(w)
    with tf.GradientTape() as tape:
        loss = getattr(keras.regularizers, name)(**kwargs)(var)
    return float(loss.numpy()), tape.gradient(loss, var).numpy()


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("name,kwargs", KERAS_REGULARIZERS, ids=[r[0] for r in KERAS_REGULARIZERS])
def test_penalty_and_gradient_match_keras(name, kwargs, shape):
    w = weights(shape, seed=seed_of(name, shape))
    penalty, grad = keras_penalty_and_gradient(name, kwargs, w)
    l1, l2 = kwargs.get("l1", 0.0), kwargs.get("l2", 0.0)
    # Keras sums in float32, we in double.
    assert R.l1l2_penalty(w, l1, l2) == pytest.approx(penalty, rel=1e-6)
    ours = R.l1l2_gradient(w, l1, l2)
    assert ours.dtype == np.float32 and ours.shape == w.shape
    np.testing.assert_allclose(ours, grad, rtol=1e-6, atol=0)
    assert_same_bits(ours, grad, "gradient (the same float32 operations as TF's)")
    assert np.all(ours[w == 0] == 0)  # sign(0) = 0 and 2*l2*0 = 0


# -- the proximal step against TF's ResourceApplyProximalGradientDescent ------

@pytest.mark.parametrize("lr,l1,l2", [(0.1, 0.5, 0.0), (0.1, 0.5, 0.3), (0.05, 0.0, 0.2),
                                      (0.5, 2.0, 0.1)])
@pytest.mark.parametrize("shape", [(7,), (1031,), (3, 70_001)], ids=str)
def test_proximal_step_matches_tf(shape, lr, l1, l2):
    w = weights(shape, seed=seed_of("prox", shape))
    g = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    var = tf.Variable(w)
    tf.raw_ops.ResourceApplyProximalGradientDescent(
        var=var.handle, alpha=np.float32(lr), l1=np.float32(l1), l2=np.float32(l2), delta=g)
    expected = var.numpy()
    ours = w.copy()
    R.proximal_step_(ours, g, lr, l1, l2)
    # Exact zeros exactly where TF has them; for l1 > 0 there are many.
    np.testing.assert_array_equal(ours == 0, expected == 0)
    if l1 > 0:
        assert np.count_nonzero(ours == 0) > 0.05 * ours.size
    np.testing.assert_allclose(ours, expected, rtol=1e-6, atol=1e-7)



def test_l2sp_new_weights_term_is_keras_l2_of_half_beta():
    """The factor-of-2 convention: beta/2 ||w||^2 is keras.regularizers.L2(beta / 2)."""
    w = weights((1031,), seed=9)
    beta = 0.06
    penalty, grad = keras_penalty_and_gradient("L2", {"l2": beta / 2}, w)
    assert R.l2sp_penalty(w, None, 0.0, beta) == pytest.approx(penalty, rel=1e-6)
    np.testing.assert_allclose(R.l2sp_gradient(w, None, 0.0, beta), grad, rtol=1e-6)



def test_sgd_with_proximal_l1_is_tf_proximal_gradient_descent():
    """Plain SGD + proximal_l1 is FOBOS: TF's ProximalGradientDescent with l2 = 0,
    exact zeros included, after each of 7 steps."""
    rng = np.random.default_rng(11)
    w = (0.05 * rng.standard_normal(4097)).astype(np.float32)
    var = tf.Variable(w)
    opt = fusedopt.SGD([w], learning_rate=0.1, proximal_l1=0.2)
    for t in range(1, NUM_STEPS + 1):
        g = (0.1 * rng.standard_normal(4097)).astype(np.float32)
        opt.step([g])
        tf.raw_ops.ResourceApplyProximalGradientDescent(
            var=var.handle, alpha=np.float32(0.1), l1=np.float32(0.2), l2=np.float32(0.0), delta=g)
        np.testing.assert_array_equal(w == 0, var.numpy() == 0, err_msg=f"step {t}: zeros")
        # TF rounds lr*l1 from float32 factors, we from doubles: 1 ulp of 0.02 apart.
        np.testing.assert_allclose(w, var.numpy(), rtol=1e-6, atol=1e-7, err_msg=f"step {t}")
    assert 0.2 * w.size < np.count_nonzero(w == 0) < w.size

