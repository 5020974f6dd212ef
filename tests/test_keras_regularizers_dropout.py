"""fusedopt.keras.regularizers, fusedopt.keras.layers.Dropout and the optimizers'
fused l1/l2/proximal_l1, against Keras's built-ins, TF's raw ops and formulas.

Each fused path is also checked to be the one that ran: the traced graph
holds the custom op (and, for gradients, its registered gradient op).
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

import fusedopt
import fusedopt.keras as fk
from fusedopt.keras import _op_library
from fusedopt.keras import layers as fk_layers
from fusedopt.keras import regularizers as fk_reg
from keras_helpers import BATCH, assert_same_training, data, fit, fused_op_probe, make_model

SHAPES = [(1,), (7,), (33, 17), (4097,)]


def graph_op_types(fn, *args):
    """Op types of the graph `fn` traces for `args`, gradient included."""
    return {op.type for op in tf.function(fn).get_concrete_function(*args).graph.get_operations()}


def value_and_grad(regularizer, w):
    v = tf.Variable(w)
    with tf.GradientTape() as tape:
        penalty = regularizer(v)
    grad = tape.gradient(penalty, v)  # None for a constant penalty (all strengths 0)
    return penalty.numpy(), None if grad is None else grad.numpy()


# -- L1 / L2 / L1L2 ----------------------------------------------------------------------
REGULARIZER_CASES = [("L1", {"l1": 0.01}), ("L2", {"l2": 0.03}), ("L1L2", {"l1": 0.02, "l2": 0.005}),
                     ("L1L2", {})]


@pytest.mark.parametrize("name,kwargs", REGULARIZER_CASES)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_penalty_and_gradient_match_keras(name, kwargs, shape, dtype):
    rng = np.random.default_rng(len(shape) * 100 + shape[0])
    w = rng.normal(size=shape).astype(dtype)
    w.flat[0] = 0.0  # sign(0) = 0, as TF's Abs gradient
    ours, theirs = getattr(fk_reg, name)(**kwargs), getattr(keras.regularizers, name)(**kwargs)
    (p_ours, g_ours), (p_keras, g_keras) = value_and_grad(ours, w), value_and_grad(theirs, w)
    rtol = 1e-6 if dtype == "float32" else 1e-12
    np.testing.assert_allclose(p_ours, p_keras, rtol=rtol, atol=0)
    assert p_ours.dtype == np.dtype(dtype)
    if not kwargs:  # L1L2(): Keras's constant 0, no gradient
        assert g_ours is None and g_keras is None
        return
    np.testing.assert_allclose(g_ours, g_keras, rtol=rtol, atol=0)
    assert g_ours.dtype == np.dtype(dtype)
    assert ours.get_config() == theirs.get_config()


def test_penalty_runs_the_fused_ops():
    w = tf.Variable(np.ones((5, 3), np.float32))
    reg = fk_reg.L1L2(l1=0.1, l2=0.2)

    def step():
        with tf.GradientTape() as tape:
            p = reg(w)
        return tape.gradient(p, w)

    types = graph_op_types(step)
    assert {"FusedoptElasticPenalty", "FusedoptElasticGradient"} <= types
    assert "Abs" not in types and "Square" not in types


def test_regularizer_in_model_fit_matches_keras():
    """A Dense kernel_regularizer: same losses and weights as keras.regularizers.L1L2."""
    runs = []
    for module in (keras.regularizers, fk_reg):
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(
            4, kernel_regularizer=module.L1L2(l1=0.01, l2=0.02), bias_regularizer=module.L2(0.1))])
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse", jit_compile=False)
        rng = np.random.default_rng(0)
        history = model.fit(rng.normal(size=(32, 6)), rng.normal(size=(32, 4)), batch_size=8,
                            shuffle=False, verbose=0)
        runs.append((model.get_weights(), history.history["loss"]))
    for a, b in zip(runs[0][0], runs[1][0]):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(runs[1][1], runs[0][1], rtol=1e-6)


def test_string_ids_and_serialization():
    assert type(fk_reg.get("l1")) is fk_reg.L1 and type(fk_reg.get("l1_l2")) is fk_reg.L1L2
    assert fk_reg.get("l2").get_config() == keras.regularizers.get("l2").get_config()
    layer = keras.layers.Dense(3, kernel_regularizer=fk_reg.L1L2(0.1, 0.2))
    restored = keras.layers.deserialize(keras.layers.serialize(layer))
    assert type(restored.kernel_regularizer) is fk_reg.L1L2
    assert restored.kernel_regularizer.get_config() == {"l1": 0.1, "l2": 0.2}
    with pytest.raises(ValueError, match="unknown regularizer"):
        fk_reg.get("l3")


# -- L2-SP -------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_l2sp_matches_its_formula(dtype):
    rng = np.random.default_rng(3)
    w, w0 = rng.normal(size=(21, 5)).astype(dtype), rng.normal(size=(21, 5)).astype(dtype)
    alpha, beta = 0.3, 0.07
    p, g = value_and_grad(fk_reg.L2SP(reference=w0, alpha=alpha, beta=beta), w)
    d = w.astype(np.float64) - w0
    rtol = 1e-6 if dtype == "float32" else 1e-12
    np.testing.assert_allclose(p, 0.5 * alpha * np.sum(d * d), rtol=rtol)
    np.testing.assert_allclose(g, alpha * d, rtol=rtol, atol=1e-7)
    p, g = value_and_grad(fk_reg.L2SP(alpha=alpha, beta=beta), w)  # a new variable: toward 0
    np.testing.assert_allclose(p, 0.5 * beta * np.sum(w.astype(np.float64) ** 2), rtol=rtol)
    np.testing.assert_allclose(g, beta * w.astype(np.float64), rtol=rtol, atol=1e-7)
    # The gradient pulls toward w0: one small step shrinks the distance.
    assert np.linalg.norm(w - 0.1 * value_and_grad(fk_reg.L2SP(w0, alpha), w)[1] - w0) < np.linalg.norm(d)


def test_l2sp_runs_the_fused_ops_and_round_trips_its_config():
    w0 = np.arange(6, dtype=np.float32).reshape(2, 3)
    reg = fk_reg.L2SP(reference=w0, alpha=0.5)
    w = tf.Variable(np.zeros((2, 3), np.float32))

    def step():
        with tf.GradientTape() as tape:
            p = reg(w)
        return tape.gradient(p, w)

    assert {"FusedoptSpPenalty", "FusedoptSpGradient"} <= graph_op_types(step)
    again = fk_reg.L2SP.from_config(reg.get_config())
    np.testing.assert_array_equal(again.reference.numpy(), w0)
    assert (again.alpha, again.beta) == (0.5, 0.01)


def test_l2sp_bad_input():
    with pytest.raises(ValueError, match="alpha"):
        fk_reg.L2SP(alpha=-1.0)
    with pytest.raises(TypeError, match="beta"):
        fk_reg.L2SP(beta="big")
    with pytest.raises(TypeError, match="reference"):
        fk_reg.L2SP(reference=np.zeros(3, np.int32))
    with pytest.raises(ValueError, match="shape"):
        fk_reg.L2SP(reference=np.zeros(3, np.float32))(tf.Variable(np.zeros(4, np.float32)))


def test_penalty_op_rejects_bad_strengths():
    module = _op_library.load()
    with pytest.raises(tf.errors.InvalidArgumentError, match="l1 must be finite and >= 0"):
        module.fusedopt_elastic_penalty(x=tf.ones([3]), l1=tf.constant(-1.0, tf.float64),
                                        l2=tf.constant(0.0, tf.float64))
    with pytest.raises(tf.errors.InvalidArgumentError, match="reference has shape"):
        module.fusedopt_sp_penalty(x=tf.ones([3]), reference=tf.ones([4]),
                                   alpha=tf.constant(1.0, tf.float64))


# -- Dropout -----------------------------------------------------------------------------
DROPOUT_CASES = [  # (shape, rate, noise_shape, dtype)
    ((1000,), 0.5, None, "float32"),
    ((7, 13), 0.1, None, "float32"),
    ((4, 65), 0.9, None, "float64"),
    ((3, 5, 8), 0.3, (None, 1, 8), "float32"),
    ((3, 5, 8), 0.5, (1, 5, 1), "float32"),
    ((2, 129), 0.25, (129,), "float32"),
]


def _layer_pair(rate, noise_shape, seed):
    return (fk_layers.Dropout(rate, noise_shape=noise_shape, seed=seed),
            keras.layers.Dropout(rate, noise_shape=noise_shape, seed=seed))


@pytest.mark.parametrize("shape,rate,noise_shape,dtype", DROPOUT_CASES)
@pytest.mark.parametrize("seed", [0, 7, 2**31 + 5])
def test_dropout_layer_bit_identical_to_keras(shape, rate, noise_shape, dtype, seed):
    x = tf.constant(np.random.default_rng(seed % 1000).normal(size=shape).astype(dtype))
    ours, theirs = _layer_pair(rate, noise_shape, seed)
    for _ in range(3):  # the SeedGenerator advances alike
        a, b = ours(x, training=True), theirs(x, training=True)
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    np.testing.assert_array_equal(ours.seed_generator.state.numpy(), theirs.seed_generator.state.numpy())


def test_dropout_layer_in_tf_function_and_gradient():
    x = tf.constant(np.random.default_rng(1).normal(size=(64, 33)).astype("float32"))
    dy = tf.constant(np.random.default_rng(2).normal(size=(64, 33)).astype("float32"))
    results = []
    for layer in _layer_pair(0.4, None, 11):
        @tf.function
        def step(x, dy, layer=layer):
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = layer(x, training=True)
            return y, tape.gradient(y, x, output_gradients=dy)

        results.append([t.numpy() for t in step(x, dy)] + [t.numpy() for t in step(x, dy)])
        types = {op.type for op in step.get_concrete_function(x, dy).graph.get_operations()}
        if layer.__class__ is fk_layers.Dropout:
            assert {"FusedoptDropout", "FusedoptDropoutGrad"} <= types
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


def test_dropout_layer_fit_matches_keras():
    runs = []
    for cls in (keras.layers.Dropout, fk_layers.Dropout):
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((10,)), keras.layers.Dense(16), cls(0.5, seed=3),
                                  keras.layers.Dense(1)])
        model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse", jit_compile=False)
        rng = np.random.default_rng(0)
        model.fit(rng.normal(size=(64, 10)), rng.normal(size=(64, 1)), batch_size=16, verbose=0,
                  shuffle=False)
        runs.append(model.get_weights())
    for a, b in zip(*runs):
        np.testing.assert_array_equal(a, b)


def test_dropout_layer_inference_rate_one_low_precision_and_config():
    x = tf.constant(np.arange(12, dtype=np.float32).reshape(3, 4))
    layer = fk_layers.Dropout(0.5, seed=1)
    assert layer(x, training=False) is x
    np.testing.assert_array_equal(fk_layers.Dropout(1.0)(x, training=True).numpy(), np.zeros((3, 4)))
    half = tf.cast(x, "float16")  # falls back to keras.random.dropout: identical
    a, b = _layer_pair(0.5, None, 5)
    np.testing.assert_array_equal(a(half, training=True).numpy(), b(half, training=True).numpy())
    ours, theirs = _layer_pair(0.3, (None, 1), 9)
    config_a, config_b = ours.get_config(), theirs.get_config()
    config_a.pop("name"), config_b.pop("name")  # auto-numbered
    assert config_a == config_b
    assert type(keras.layers.deserialize(keras.layers.serialize(ours))) is fk_layers.Dropout


def test_dropout_bad_input():
    with pytest.raises(ValueError, match="rate"):
        fk_layers.Dropout(1.5)
    with pytest.raises(ValueError, match="noise_shape"):
        fk_layers.Dropout(0.5, noise_shape="abc")
    with pytest.raises(ValueError, match=r"noise_shape \(2, 3\) does not broadcast"):
        fk_layers.Dropout(0.5, noise_shape=(2, 3))(tf.ones([4, 3]), training=True)
    with pytest.raises(ValueError, match="floating point"):  # as the built-in
        fk_layers.Dropout(0.5)(tf.ones([4, 3], tf.int32), training=True)
    module = _op_library.load()
    x = tf.ones([4, 3])
    seed = tf.constant([1, 2], tf.int64)
    rate = tf.constant(0.5, tf.float64)
    with pytest.raises(tf.errors.InvalidArgumentError, match="rate must be in"):
        module.fusedopt_dropout(x=x, rate=tf.constant(1.0, tf.float64), seed=seed,
                                noise_shape=tf.constant([4, 3], tf.int64))
    with pytest.raises(tf.errors.InvalidArgumentError, match="noise_shape"):
        module.fusedopt_dropout(x=x, rate=rate, seed=seed, noise_shape=tf.constant([2, 3], tf.int64))
    with pytest.raises(tf.errors.InvalidArgumentError, match="mask has shape"):
        module.fusedopt_dropout_grad(dy=x, mask=tf.zeros([1], tf.uint8), rate=rate,
                                     noise_shape=tf.constant([4, 3], tf.int64))
    with pytest.raises((TypeError, tf.errors.InvalidArgumentError)):
        module.fusedopt_dropout(x=tf.ones([4], tf.int32), rate=rate, seed=seed,
                                noise_shape=tf.constant([4], tf.int64))


def test_dropout_mask_is_one_bit_per_element():
    module = _op_library.load()
    y, mask = module.fusedopt_dropout(x=tf.ones([1000, 10]), rate=tf.constant(0.5, tf.float64),
                                      seed=tf.constant([3, 0], tf.int64),
                                      noise_shape=tf.constant([1000, 10], tf.int64))
    assert mask.dtype == tf.uint8 and mask.shape == (1250,)
    # The same bits as the NumPy API's packed mask for that seed pair.
    _, np_mask = fusedopt.ops.dropout(np.ones((1000, 10), np.float32), 0.5, (3, 0))
    np.testing.assert_array_equal(mask.numpy(), np_mask)
    np.testing.assert_array_equal(np.unpackbits(mask.numpy(), bitorder="little").astype(bool),
                                  y.numpy().ravel() != 0)


# -- optimizers: l1 / l2 / proximal_l1 ---------------------------------------------------
def _fit_pair(name, kwargs, reg_kwargs, monkeypatch):
    """The fused op vs Keras's update with the same regularization (the fallback)."""
    runs = []
    for fused in (True, False):
        optimizer = getattr(fk, name)(**kwargs, **reg_kwargs)
        model = make_model()
        with monkeypatch.context() as m:
            if not fused:
                m.setattr(_op_library, "usable", lambda: False)
            with fused_op_probe() as calls:
                fit(optimizer, model)
        assert bool(calls) == fused
        runs.append((model, optimizer))
    return runs


@pytest.mark.parametrize("name,kwargs", [
    ("Adam", {"learning_rate": 0.01}), ("AdamW", {"learning_rate": 0.01, "weight_decay": 0.1}),
    ("SGD", {"learning_rate": 0.05, "momentum": 0.9}), ("RMSprop", {"learning_rate": 0.01}),
    ("Lamb", {"learning_rate": 0.01}), ("Adafactor", {"learning_rate": 0.05}),
    ("Nadam", {"learning_rate": 0.01}),
])
@pytest.mark.parametrize("reg_kwargs", [{"l2": 0.01}, {"l1": 0.001, "l2": 0.002},
                                        {"proximal_l1": 0.05}, {"l1": 0.002, "proximal_l1": 0.05}],
                         ids=["l2", "l1l2", "proximal", "l1+proximal"])
def test_optimizer_regularization_fused_equals_keras_update(name, kwargs, reg_kwargs, monkeypatch):
    (model_a, opt_a), (model_b, opt_b) = _fit_pair(name, kwargs, reg_kwargs, monkeypatch)
    assert_same_training(model_b, opt_b, model_a, opt_a)


def test_optimizer_l1l2_equals_keras_regularizers_on_every_weight():
    """fk.Adam(l1, l2) == keras Adam with L1L2(l1, l2) as every weight's regularizer."""
    l1, l2 = 0.001, 0.01
    built_in, ours = keras.optimizers.Adam(0.01), fk.Adam(0.01, l1=l1, l2=l2)
    model_a = make_model()
    for layer in model_a.layers:
        for attr in ("kernel_regularizer", "bias_regularizer"):
            if hasattr(layer, attr):
                for v in layer.trainable_variables:
                    v.regularizer = keras.regularizers.L1L2(l1, l2)
    fit(built_in, model_a)
    model_b = make_model()
    fit(ours, model_b)
    for a, b in zip(model_a.get_weights(), model_b.get_weights()):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)


def test_optimizer_proximal_l1_matches_tf_proximal_gradient_descent():
    rng = np.random.default_rng(4)
    w0 = rng.normal(scale=0.05, size=(50,)).astype(np.float32)
    grads = [rng.normal(size=(50,)).astype(np.float32) for _ in range(7)]
    lr, l1 = 0.01, 2.0
    ours = keras.Variable(w0)
    opt = fk.SGD(lr, proximal_l1=l1)
    ref = tf.Variable(w0)
    for g in grads:
        with fused_op_probe() as calls:
            opt.apply_gradients([(tf.constant(g), ours)])
        tf.raw_ops.ResourceApplyProximalGradientDescent(var=ref.handle, alpha=lr, l1=l1, l2=0.0, delta=g)
        np.testing.assert_allclose(ours.numpy(), ref.numpy(), rtol=1e-6, atol=1e-7)
    assert calls
    assert np.sum(ours.numpy() == 0.0) > 0 and np.array_equal(ours.numpy() == 0, ref.numpy() == 0)


def test_optimizer_regularization_config_and_bad_input():
    opt = fk.Adam(0.01, l2=0.001)
    config = opt.get_config()
    assert config["l2"] == 0.001 and "l1" not in config
    assert fk.Adam.from_config(config).l2 == 0.001
    assert fk.Adam(name="a").get_config() == keras.optimizers.Adam(name="a").get_config()
    with pytest.raises(ValueError, match="l2 must be >= 0"):
        fk.Adam(l2=-1.0)
    with pytest.raises(ValueError, match="proximal_l1 must be finite"):
        fk.SGD(proximal_l1=float("nan"))
    with pytest.raises(TypeError, match="l1 must be a number"):
        fk.RMSprop(l1="0.1")
