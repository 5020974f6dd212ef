"""fusedopt.keras.X reproduces keras.optimizers.X: every optimizer and variant.

The same seeded model (rank-3 Conv1D kernel, 1-D biases, 2-D Dense kernels)
is trained with model.fit for 6 steps with the built-in and with fusedopt's
drop-in; model weights and every optimizer variable (same count, order,
names, shapes) must agree to float32 precision, and the fused op must have
been traced into the train step.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

import fusedopt.keras as fk
from keras_helpers import (BATCH, CASE_IDS, CASES, STEPS, assert_close, assert_same_training, compare_fit,
                           data, fit, fused_op_probe, make_model, optimizer_pair, optimizer_state)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def test_every_keras_optimizer_has_a_drop_in():
    exported = {name for name in dir(keras.optimizers)
                if isinstance(getattr(keras.optimizers, name), type)
                and issubclass(getattr(keras.optimizers, name), keras.optimizers.Optimizer)}
    wrappers = {"Optimizer", "LossScaleOptimizer", "MultiOptimizer"}
    assert exported - wrappers <= set(fk.__all__)
    for name in exported - wrappers:
        ours = getattr(fk, name)
        assert issubclass(ours, getattr(keras.optimizers, name))
        assert ours.__name__ == name


def _float32_update_tolerance(w0):
    """atol for a one-step update (new - old weight) of float32 weights `w0`:
    both results are rounded to float32 weights, so their difference is only
    known to a couple of ulps of the weights."""
    return 4 * float(np.spacing(np.float32(np.max(np.abs(w0)))))


@pytest.mark.parametrize("case", CASE_IDS)
def test_matches_builtin(case):
    """After 1 step: tight; after 6 steps: weights and slots to float32 precision.

    After one step from the same state, every slot agrees to 1e-6 relative (atol
    scaled to each tensor's magnitude, so slots whose values are all tiny are
    really checked) and every weight update (new - old) to 1e-5 relative.
    Regression: hyperparameters reached the op through tf.cast(python_float,
    tf.float64), which rounds to float32 first; 1 - float32(0.999) is off by
    1.3e-5 relative, and so was Adam's velocity. A plain atol of 1e-6 after 6
    steps could not see it: the velocity is ~1e-5 everywhere.
    Updates get 1e-5, not 1e-6: Keras's Adam family computes 1 - beta_2^t from a
    float32-rounded beta_2, so its step size is ~6e-6 relative off the exact one
    the engine computes in double.
    """
    _, name, kwargs = CASES[case]
    x, y = data()
    initial = make_model().get_weights()
    runs = []
    for optimizer in optimizer_pair(name, **kwargs):
        model = make_model()
        with fused_op_probe() as calls:
            fit(optimizer, model, x[:BATCH], y[:BATCH])
        one_step = (model.get_weights(), optimizer_state(optimizer))
        fit(optimizer, model, x[BATCH:], y[BATCH:])  # 5 more steps, same train function
        runs.append((model, optimizer, one_step, calls))
    (model_a, opt_a, (wa, sa), _), (model_b, opt_b, (wb, sb), calls) = runs
    assert calls, "the fused op was never traced into the train step"
    for i, (w0, a, b) in enumerate(zip(initial, wa, wb)):
        assert_close(b - w0, a - w0, _float32_update_tolerance(w0), 1e-5, f"step 1: update of weight {i}")
    assert [(n, s) for n, s, _ in sa] == [(n, s) for n, s, _ in sb]
    for i, ((n, _, a), (_, _, b)) in enumerate(zip(sa, sb)):
        assert_close(b, a, 1e-6, 1e-6, f"step 1: optimizer variable {i} ({n})", scaled_atol=True)
    assert int(opt_b.iterations.numpy()) == STEPS
    assert_same_training(model_a, opt_a, model_b, opt_b)


def test_rule_names_cover_variants():
    """Each variant traces the fused op of its own rule (not a neighbour's)."""
    expected = {"sgd": "sgd", "sgd_momentum": "sgd_momentum", "sgd_nesterov": "sgd_nesterov",
                "rmsprop": "rmsprop", "rmsprop_centered": "rmsprop_centered",
                "rmsprop_momentum": "rmsprop_momentum",
                "rmsprop_centered_momentum": "rmsprop_centered_momentum",
                "adam": "adam", "adam_amsgrad": "adam_amsgrad", "nadam": "nadam"}
    for case, rule in expected.items():
        _, name, kwargs = CASES[case]
        assert getattr(fk, name)(**kwargs)._fused_rule() == rule


def test_float64_variables_use_the_fused_op():
    """float64 variables (dtype policy "float64") take the float64 kernel."""
    model_fn = lambda: make_model(dtype="float64")  # noqa: E731
    _, _, model, opt, calls = compare_fit("Adam", {"learning_rate": 0.01}, model_fn=model_fn,
                                          )
    assert calls
    assert all(str(v.dtype) == "float64" for v in model.trainable_variables)


def test_slot_variables_same_as_builtin_before_training():
    """Built but untrained: the same variables, in the same order, with the same values."""
    for case in CASE_IDS:
        _, name, kwargs = CASES[case]
        model = make_model()
        a, b = getattr(keras.optimizers, name)(**kwargs), getattr(fk, name)(**kwargs)
        a.build(model.trainable_variables)
        b.build(model.trainable_variables)
        sa, sb = optimizer_state(a), optimizer_state(b)
        assert [(n, s) for n, s, _ in sa] == [(n, s) for n, s, _ in sb], case
        for (_, _, x), (_, _, y) in zip(sa, sb):
            np.testing.assert_array_equal(x, y)


class _AdamWithExactBiasCorrection(keras.optimizers.Adam):
    """keras.optimizers.Adam with one change: alpha = lr * sqrt(1 - b2^t) / (1 - b1^t)
    from the exact betas in float64 (Keras: float32(beta) powers in float32)."""

    def update_step(self, gradient, variable, learning_rate):
        import tensorflow as tf
        from keras import ops

        t = tf.cast(self.iterations + 1, tf.float64)
        alpha = (tf.cast(learning_rate, tf.float64)
                 * tf.sqrt(1.0 - tf.pow(tf.constant(self.beta_2, tf.float64), t))
                 / (1.0 - tf.pow(tf.constant(self.beta_1, tf.float64), t)))
        alpha = ops.cast(alpha, variable.dtype)
        m = self._momentums[self._get_variable_index(variable)]
        v = self._velocities[self._get_variable_index(variable)]
        self.assign_add(m, ops.multiply(ops.subtract(gradient, m), 1 - self.beta_1))
        self.assign_add(v, ops.multiply(ops.subtract(ops.square(gradient), v), 1 - self.beta_2))
        self.assign_sub(variable, ops.divide(ops.multiply(m, alpha), ops.add(ops.sqrt(v), self.epsilon)))


def test_adam_difference_is_kerass_float32_bias_correction():
    """The only difference between fusedopt's Adam and Keras's is Keras's float32
    bias correction: with it computed exactly, the two agree to a few ulps even at
    a large learning rate, where the built-in is visibly (~6e-6 relative per step)
    apart."""
    x, y = data()
    kwargs = {"learning_rate": 0.1}
    ref, ours = keras.optimizers.Adam(**kwargs), fk.Adam(**kwargs)
    exact = _AdamWithExactBiasCorrection(name="adam_exact", **kwargs)
    models = [fit(opt) for opt in (ref, exact, ours)]
    assert_same_training(models[1], exact, models[2], ours, atol=1e-7, rtol=1e-6)
    with pytest.raises(AssertionError):
        assert_same_training(models[0], ref, models[2], ours, atol=1e-7, rtol=1e-6)
