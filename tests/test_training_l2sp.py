"""fusedopt.training.attach_l2sp: alpha/2 ||w - w0||^2 + beta/2 ||w_new||^2 (Li et al., ICML 2018)."""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

import fusedopt.keras as fk  # noqa: E402
import fusedopt.training as ft  # noqa: E402

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
ALPHA, BETA = 0.3, 0.05


def pretrained_and_model(seed: int = 0) -> tuple[keras.Model, keras.Model, dict[str, np.ndarray]]:
    """A base with BatchNorm, a transfer model on it, and the base's weights moved off w0."""
    keras.utils.set_random_seed(seed)
    base = keras.Sequential([keras.Input((5,)), keras.layers.Dense(8, name="d1"),
                             keras.layers.BatchNormalization(name="bn"), keras.layers.Dense(4, name="d2")],
                            name="base")
    model = ft.transfer_model(base, keras.layers.Dense(3, name="head"), freeze_base=False)
    w0 = {v.path: v.numpy().copy() for v in model.weights}
    return base, model, w0


def move(model: keras.Model, seed: int = 1) -> None:
    rng = np.random.default_rng(seed)
    for v in model.trainable_weights:
        v.assign(v.numpy() + 0.1 * rng.standard_normal(v.shape).astype(np.float32))


def penalty_gradients(model: keras.Model) -> tuple[float, dict[str, np.ndarray]]:
    with tf.GradientTape() as tape:
        total = tf.add_n(model.losses)
    grads = tape.gradient(total, model.trainable_weights)
    return float(total), {v.path: np.zeros(v.shape) if g is None else g.numpy()
                          for v, g in zip(model.trainable_weights, grads)}


PRETRAINED = ["base/d1/kernel", "base/d1/bias", "base/bn/gamma", "base/bn/beta", "base/d2/kernel", "base/d2/bias"]
NEW = ["head/kernel", "head/bias"]


def test_l2sp_gradient_pulls_toward_w0():
    """d/dw of the added loss is alpha*(w - w0) for pretrained variables and beta*w for new ones."""
    base, model, w0 = pretrained_and_model()
    info = ft.attach_l2sp(model, base, alpha=ALPHA, beta=BETA)
    assert list(info.pretrained) == PRETRAINED and list(info.new) == NEW  # BN moving stats excluded
    assert info.implementation == "fusedopt.keras.regularizers.L2SP"  # the C++ kernels
    move(model)
    value, grads = penalty_gradients(model)
    want = 0.0
    for v in model.trainable_weights:
        w = v.numpy()
        if v.path in PRETRAINED:
            np.testing.assert_allclose(grads[v.path], ALPHA * (w - w0[v.path]), rtol=1e-5, atol=1e-7)
            want += ALPHA / 2 * np.sum((w.astype(np.float64) - w0[v.path]) ** 2)
        else:
            np.testing.assert_allclose(grads[v.path], BETA * w, rtol=1e-5, atol=1e-7)
            want += BETA / 2 * np.sum(w.astype(np.float64) ** 2)
    np.testing.assert_allclose(value, want, rtol=1e-5)
    # A gradient step on the penalty alone moves every pretrained weight toward w0.
    for v in model.trainable_weights:
        if v.path in PRETRAINED:
            d_before = np.abs(v.numpy() - w0[v.path])
            d_after = np.abs(v.numpy() - 0.5 * grads[v.path] - w0[v.path])
            assert np.all(d_after <= d_before + 1e-7) and np.any(d_after < d_before)


def test_l2sp_matches_the_numpy_kernel_when_available():
    regularizers = pytest.importorskip("fusedopt.regularizers")
    if not hasattr(regularizers, "l2sp_penalty"):
        pytest.skip("fusedopt.regularizers.l2sp_penalty not available")
    base, model, w0 = pretrained_and_model()
    ft.attach_l2sp(model, base, alpha=ALPHA, beta=BETA)
    move(model)
    value, _ = penalty_gradients(model)
    ws = [np.ascontiguousarray(v.numpy()) for v in model.trainable_weights]
    refs = [w0[v.path] if v.path in PRETRAINED else None for v in model.trainable_weights]
    np.testing.assert_allclose(value, regularizers.l2sp_penalty(ws, refs, ALPHA, BETA), rtol=1e-5)


def test_reference_forms_agree():
    """A model, a path->array mapping and a list aligned with model.weights give the same penalty."""
    values = []
    for form in ("model", "mapping", "list"):
        base, model, w0 = pretrained_and_model()
        if form == "model":
            ref = base
        elif form == "mapping":
            ref = {p: w0[p] for p in PRETRAINED}
        else:
            ref = [w0[v.path] if v.path.startswith("base/") else np.zeros(v.shape) for v in model.weights]
        info = ft.attach_l2sp(model, ref, alpha=ALPHA, beta=BETA)
        move(model)
        values.append(penalty_gradients(model)[0])
        if form != "list":
            assert list(info.pretrained) == PRETRAINED
    np.testing.assert_allclose(values[0], values[1], rtol=1e-6)
    # The list form treats every weight as pretrained (head w0 = 0, i.e. the alpha term on it).
    assert values[2] != pytest.approx(values[0])


def test_reference_snapshot_is_taken_at_attach_time():
    base, model, w0 = pretrained_and_model()
    ft.attach_l2sp(model, base, alpha=ALPHA, beta=0.0)
    assert penalty_gradients(model)[0] == pytest.approx(0.0, abs=1e-8)  # w == w0, no beta term
    move(model)
    assert penalty_gradients(model)[0] > 0


def test_frozen_variables_cost_nothing_until_unfrozen():
    base, model, _ = pretrained_and_model()
    ft.attach_l2sp(model, base, alpha=ALPHA, beta=0.0)
    move(model)
    ft.freeze(model, base)
    assert model.losses == []
    ft.unfreeze(model, base, keep_batchnorm_frozen=False)
    assert len(model.losses) == len(PRETRAINED)


def test_existing_regularizers_are_kept_and_detach_restores_them():
    keras.utils.set_random_seed(0)
    base = keras.Sequential([keras.Input((5,)), keras.layers.Dense(4, name="d1",
                                                                    kernel_regularizer=keras.regularizers.L2(0.5))],
                            name="base")
    model = ft.transfer_model(base, keras.layers.Dense(2, name="head"), freeze_base=False)
    kernel = base.layers[0].kernel
    w0 = kernel.numpy().copy()
    ft.attach_l2sp(model, base, alpha=ALPHA, beta=0.0)
    ft.attach_l2sp(model, base, alpha=ALPHA, beta=0.0)  # again: replaces, does not stack
    assert float(tf.add_n(model.losses)) == pytest.approx(0.5 * float(np.sum(w0 ** 2)), rel=1e-5)  # at w0
    move(model)
    _, grads = penalty_gradients(model)
    w = kernel.numpy()
    np.testing.assert_allclose(grads["base/d1/kernel"], ALPHA * (w - w0) + 2 * 0.5 * w, rtol=1e-5, atol=1e-7)
    assert ft.detach_l2sp(model) == 2
    assert isinstance(kernel.regularizer, keras.regularizers.L2)
    assert float(tf.add_n(model.losses)) == pytest.approx(0.5 * float(np.sum(w ** 2)), rel=1e-5)
    assert ft.detach_l2sp(model) == 0


def test_l2sp_in_fit_keeps_weights_near_w0():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 5)).astype(np.float32)
    y = rng.integers(0, 3, 64).astype(np.int32)
    distances = {}
    for alpha in (0.0, 10.0):
        base, model, w0 = pretrained_and_model()
        ft.attach_l2sp(model, base, alpha=alpha, beta=0.0)
        model.compile(optimizer=fk.Adam(3e-2), loss=LOSS)
        model.fit(x, y, epochs=3, batch_size=16, verbose=0)
        distances[alpha] = sum(float(np.sum((v.numpy() - w0[v.path]) ** 2)) for v in base.trainable_weights)
    assert distances[10.0] < 0.5 * distances[0.0]


def test_argument_checks():
    base, model, _ = pretrained_and_model()
    with pytest.raises(ValueError, match="alpha"):
        ft.attach_l2sp(model, base, alpha=-1.0, beta=0.0)
    with pytest.raises(TypeError, match="beta"):
        ft.attach_l2sp(model, base, alpha=1.0, beta="0")
    with pytest.raises(ValueError, match="no model variable has the path 'd1/kernel'"):
        ft.attach_l2sp(model, {"d1/kernel": np.zeros((5, 8))}, alpha=1.0, beta=0.0)
    with pytest.raises(ValueError, match="shape"):
        ft.attach_l2sp(model, {"base/d1/kernel": np.zeros((8, 5))}, alpha=1.0, beta=0.0)
    with pytest.raises(ValueError, match="aligned with model.weights"):
        ft.attach_l2sp(model, [np.zeros((5, 8))], alpha=1.0, beta=0.0)
    other = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="zz")], name="other")
    with pytest.raises(ValueError, match="no variable of the reference model"):
        ft.attach_l2sp(model, other, alpha=1.0, beta=0.0)
    with pytest.raises(TypeError, match="reference"):
        ft.attach_l2sp(model, 3, alpha=1.0, beta=0.0)
    assert all(v.regularizer is None for v in model.weights)  # nothing attached by a failed call
