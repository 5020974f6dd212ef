"""fusedopt.training transfer-learning helpers: freezing, recompiling, per-layer learning rates."""

from __future__ import annotations

import os
import re
import warnings

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import fusedopt.keras as fk  # noqa: E402
import fusedopt.training as ft  # noqa: E402

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def base_model(seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    return keras.Sequential([
        keras.Input((6,)),
        keras.layers.Dense(16, activation="relu", name="d1"),
        keras.layers.BatchNormalization(name="bn"),
        keras.layers.Dense(8, activation="relu", name="d2"),
    ], name="base")


def classifier(seed: int = 0, freeze_base: bool = True) -> tuple[keras.Model, keras.Model]:
    base = base_model(seed)
    keras.utils.set_random_seed(seed + 1)
    model = ft.transfer_model(base, [keras.layers.Dense(8, activation="relu", name="d3"),
                                     keras.layers.Dense(3, name="head")], freeze_base=freeze_base, name="clf")
    return model, base


def data(n: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = (3.0 * rng.standard_normal((n, 6)) + 1.0).astype(np.float32)  # BN statistics would move
    return x, (np.argmax(x[:, :3], axis=1)).astype(np.int32)


def snapshot(layer: keras.layers.Layer) -> dict[str, np.ndarray]:
    return {v.path: np.array(v.numpy()) for v in layer.weights}


def changed(before: dict[str, np.ndarray], layer: keras.layers.Layer) -> dict[str, bool]:
    return {v.path: not np.array_equal(before[v.path], v.numpy()) for v in layer.weights}


# -- finding layers, patterns -------------------------------------------------

def test_find_layers_searches_nested_models():
    model, base = classifier()
    assert ft.find_layers(model, "d1") == [base.get_layer("d1")]
    assert ft.find_layers(model, ["head", base]) == [model.get_layer("head"), base]
    assert ft.find_layers(model, None) == [model]
    with pytest.raises(ValueError, match="no layer named 'nope'"):
        ft.find_layers(model, "nope")
    with pytest.raises(ValueError, match="not part of model"):
        ft.find_layers(model, keras.layers.Dense(2))
    with pytest.raises(TypeError):
        ft.find_layers(model, [3])
    twice = keras.Sequential([keras.Input((2,)), keras.Sequential([keras.layers.Dense(2, name="x")], name="a"),
                              keras.Sequential([keras.layers.Dense(2, name="x")], name="b")])
    with pytest.raises(ValueError, match="2 layers are named 'x'"):
        ft.find_layers(twice, "x")


def test_variable_path_pattern_matches_exactly_the_layer_variables():
    """A hand-written "d1/.*" matches nothing: paths start with the enclosing model's name."""
    model, base = classifier()
    paths = [v.path for v in model.weights]
    assert "base/d1/kernel" in paths and "head/kernel" in paths
    assert not any(re.fullmatch("d1/.*", p) for p in paths)  # the pitfall
    pattern = ft.variable_path_pattern("d1", model)
    assert [p for p in paths if re.fullmatch(pattern, p)] == ["base/d1/kernel", "base/d1/bias"]
    pattern = ft.variable_path_pattern([base.get_layer("bn"), model.get_layer("head").kernel])
    assert sorted(p for p in paths if re.fullmatch(pattern, p)) == sorted(
        ["base/bn/gamma", "base/bn/beta", "base/bn/moving_mean", "base/bn/moving_variance", "head/kernel"])
    with pytest.raises(ValueError, match="model="):
        ft.variable_path_pattern("d1")


# -- transfer_model, freeze, unfreeze --------------------------------------------

def test_frozen_layers_do_not_change_while_training():
    model, base = classifier()
    x, y = data()
    model.compile(optimizer=fk.Adam(1e-2), loss=LOSS)
    base_before, head_before = snapshot(base), snapshot(model.get_layer("head"))
    model.fit(x, y, epochs=2, batch_size=16, verbose=0)
    assert not any(changed(base_before, base).values())  # BN statistics included
    assert all(changed(head_before, model.get_layer("head")).values())


def test_freeze_recompiles_so_the_change_takes_effect():
    """Regression (Keras behaviour the helper works around): a compiled model ignores a
    change of `trainable` until it is compiled again (Keras 3.15 only warns)."""
    x, y = data()
    model, base = classifier(freeze_base=False)
    model.compile(optimizer=fk.Adam(1e-2), loss=LOSS, metrics=["accuracy"])
    model.fit(x, y, epochs=1, batch_size=16, verbose=0)
    base.trainable = False  # by hand, no recompile
    before = snapshot(base.get_layer("d1"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(x, y, epochs=1, batch_size=16, verbose=0)
    assert all(changed(before, base.get_layer("d1")).values())  # still trained

    model, base = classifier(freeze_base=False)
    model.compile(optimizer=fk.Adam(1e-2), loss=LOSS, metrics=["accuracy"])
    model.fit(x, y, epochs=1, batch_size=16, verbose=0)
    assert ft.freeze(model, "base") == [base]
    before = snapshot(base)
    history = model.fit(x, y, epochs=1, batch_size=16, verbose=0).history
    assert not any(changed(before, base).values())
    assert "accuracy" in history  # the compile arguments were kept
    assert isinstance(model.optimizer, fk.Adam) and model.optimizer.learning_rate.numpy() == pytest.approx(1e-2)


def test_unfreeze_keeps_batchnorm_frozen_and_in_inference_mode():
    x, y = data()
    model, base = classifier()
    model.compile(optimizer=fk.Adam(1e-2), loss=LOSS)
    model.fit(x, y, epochs=1, batch_size=16, verbose=0)
    ft.unfreeze(model, base, optimizer=fk.Adam(1e-3))
    bn = base.get_layer("bn")
    assert base.trainable and not bn.trainable
    before_bn, before_d1 = snapshot(bn), snapshot(base.get_layer("d1"))
    model.fit(x, y, epochs=1, batch_size=16, verbose=0)
    assert not any(changed(before_bn, bn).values())
    assert all(changed(before_d1, base.get_layer("d1")).values())
    assert model.optimizer.learning_rate.numpy() == pytest.approx(1e-3)


def test_transfer_model_keeps_batchnorm_statistics_when_unfrozen():
    """transfer_model runs the base in inference mode: BN gamma/beta train, moving stats stay."""
    x, y = data()
    model, base = classifier()
    model.compile(optimizer=fk.Adam(1e-2), loss=LOSS)
    ft.unfreeze(model, keep_batchnorm_frozen=False)
    bn = base.get_layer("bn")
    assert bn.trainable
    before = snapshot(bn)
    model.fit(x, y, epochs=1, batch_size=16, verbose=0)
    moved = changed(before, bn)
    assert moved["base/bn/gamma"] and moved["base/bn/beta"]
    assert not moved["base/bn/moving_mean"] and not moved["base/bn/moving_variance"]


def test_functional_training_false_is_overridden_by_fit():
    """Regression (why InferenceMode exists): in a Keras 3.15 functional model,
    `base(inputs, training=False)` is replaced by the outer call's training=True during
    fit (keras/src/models/functional.py, operation_fn; keras-team/keras#20285), so an
    unfrozen BatchNormalization re-estimates its statistics on the new data."""
    x, y = data()
    base = base_model()
    inputs = keras.Input((6,))
    plain = keras.Model(inputs, keras.layers.Dense(3)(base(inputs, training=False)))
    plain.compile(optimizer=fk.Adam(1e-2), loss=LOSS)
    bn = base.get_layer("bn")
    before = snapshot(bn)
    plain.fit(x, y, epochs=1, batch_size=16, verbose=0)
    assert changed(before, bn)["base/bn/moving_mean"]  # Keras; transfer_model avoids this


def test_inference_mode_round_trips_through_saving(tmp_path):
    model, base = classifier(freeze_base=False)
    x, _ = data(8)
    path = tmp_path / "m.keras"
    model.save(path)
    again = keras.saving.load_model(path)
    assert isinstance(again.layers[1], ft.InferenceMode)
    np.testing.assert_allclose(again.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-6)
    assert [v.shape for v in again.weights] == [v.shape for v in model.weights]


def test_unfreeze_whole_model_reaches_a_nested_frozen_base():
    """Regression: on the TF backend `model.trainable = True` on a trainable model is a no-op
    (KerasAutoTrackable.__setattr__ short-circuits an assignment of the same object), so a
    frozen base inside stays frozen; unfreeze(model) goes through the property setter."""
    model, base = classifier()
    model.trainable = True
    assert not base.trainable  # Keras 3.15 on TensorFlow
    ft.unfreeze(model, keep_batchnorm_frozen=False)
    assert base.trainable and base.get_layer("bn").trainable
    assert {v.path for v in base.trainable_weights} <= {v.path for v in model.trainable_weights}
    assert len(model.trainable_weights) == 10


def test_unfreeze_a_layer_inside_a_frozen_base():
    x, y = data()
    model, base = classifier()
    model.compile(optimizer=fk.Adam(1e-2), loss=LOSS)
    ft.unfreeze(model, "d2")
    before_d1, before_d2 = snapshot(base.get_layer("d1")), snapshot(base.get_layer("d2"))
    model.fit(x, y, epochs=1, batch_size=16, verbose=0)
    assert not any(changed(before_d1, base.get_layer("d1")).values())
    assert all(changed(before_d2, base.get_layer("d2")).values())


def test_freeze_before_compile_and_argument_checks():
    model, base = classifier(freeze_base=False)
    assert not model.compiled
    ft.freeze(model, base)  # nothing to recompile
    assert not base.trainable and not model.compiled
    with pytest.raises(ValueError, match="recompile"):
        ft.unfreeze(model, base, optimizer=fk.Adam(), recompile=False)
    assert not base.trainable  # nothing changed
    assert ft.recompile(model) is False
    with pytest.raises(ValueError, match="single symbolic input"):
        ft.transfer_model(keras.Sequential([keras.layers.Dense(2)]), keras.layers.Dense(1))
    m = ft.transfer_model(keras.Sequential([keras.layers.Dense(2)]), keras.layers.Dense(1), input_shape=(5,))
    assert m.output.shape == (None, 1)


# -- per-layer learning rates ---------------------------------------------------------

def test_per_layer_learning_rates_reach_the_right_variables():
    """lr=0 layers stay unchanged; the others change; the innermost listed layer wins."""
    x, y = data()
    model, base = classifier(freeze_base=False)
    opt = ft.discriminative_optimizer(model, {base: 0.0, "d2": 1e-2, "head": 0.0}, default_learning_rate=1e-2,
                                      optimizer=fk.Adam)
    assert isinstance(opt, keras.optimizers.MultiOptimizer)
    assert len(opt.optimizers) == 2  # one per distinct rate: 1e-2 (default, d2, d3) and 0
    model.compile(optimizer=opt, loss=LOSS)
    layers = {n: (model.get_layer(n) if n in ("d3", "head") else base.get_layer(n)) for n in ("d1", "bn", "d2", "d3", "head")}
    before = {n: snapshot(l) for n, l in layers.items()}
    model.fit(x, y, epochs=2, batch_size=16, verbose=0)
    assert not any(changed(before["d1"], layers["d1"]).values())
    assert not any(changed(before["head"], layers["head"]).values())
    bn = changed(before["bn"], layers["bn"])
    assert not bn["base/bn/gamma"] and not bn["base/bn/beta"]
    assert all(changed(before["d2"], layers["d2"]).values())
    assert all(changed(before["d3"], layers["d3"]).values())  # default rate
    rates = sorted((float(o.learning_rate.numpy()), int(o.iterations.numpy())) for o in opt.optimizers)
    assert rates == [(0.0, 8), (pytest.approx(1e-2), 8)]  # 2 epochs x 4 batches each


def test_per_layer_learning_rates_with_sgd_and_schedules_match_separate_updates():
    """Each variable moves by exactly -lr_layer * grad under SGD."""
    model, base = classifier(freeze_base=False)
    x, y = data(16)
    schedule = keras.optimizers.schedules.ExponentialDecay(0.1, decay_steps=10, decay_rate=0.5)
    opt = ft.discriminative_optimizer(model, [(["d1", "bn"], 0.01), ("d2", schedule)], default_learning_rate=0.5,
                                      optimizer=keras.optimizers.SGD)
    model.compile(optimizer=opt, loss=LOSS)
    import tensorflow as tf
    with tf.GradientTape() as tape:
        loss = LOSS(y, model(x, training=True))
    grads = {v.path: g.numpy() for v, g in zip(model.trainable_weights, tape.gradient(loss, model.trainable_weights))}
    before = {v.path: v.numpy().copy() for v in model.trainable_weights}
    model.train_on_batch(x, y)
    expect_lr = {"base/d1": 0.01, "base/bn": 0.01, "base/d2": 0.1, "d3": 0.5, "head": 0.5}
    for v in model.trainable_weights:
        lr = expect_lr[v.path.rsplit("/", 1)[0]]
        np.testing.assert_allclose(v.numpy(), before[v.path] - lr * grads[v.path], rtol=2e-5, atol=1e-6,
                                   err_msg=v.path)


def test_innermost_listed_layer_wins_in_any_order():
    keras.utils.set_random_seed(0)
    inner = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="only")], name="block")
    model = ft.transfer_model(inner, keras.layers.Dense(2, name="head"), freeze_base=False)
    kernel = inner.get_layer("only").kernel
    for rates in ({"only": 0.0, "block": 0.5}, {"block": 0.5, "only": 0.0}):
        opt = ft.discriminative_optimizer(model, rates, default_learning_rate=0.1, optimizer=keras.optimizers.SGD)
        chosen = opt._optimizer_map(kernel)
        assert float(chosen.learning_rate.numpy()) == 0.0, rates


def test_discriminative_optimizer_errors_and_serialization():
    model, base = classifier(freeze_base=False)
    with pytest.raises(ValueError, match=">= 0"):
        ft.discriminative_optimizer(model, {"d1": -1.0}, 1e-3)
    with pytest.raises(TypeError, match="learning rate"):
        ft.discriminative_optimizer(model, {"d1": "fast"}, 1e-3)
    with pytest.raises(ValueError, match="no layer named"):
        ft.discriminative_optimizer(model, {"d9": 1e-3}, 1e-3)
    unbuilt = keras.Sequential([keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="build"):
        ft.discriminative_optimizer(unbuilt, {}, 1e-3)
    # Two variables with one path need different rates: MultiOptimizer cannot tell them apart.
    class Twins(keras.Model):
        def __init__(self):
            super().__init__(name="twins")
            self.a = keras.Sequential([keras.layers.Dense(2, name="x")], name="same")
            self.b = keras.Sequential([keras.layers.Dense(2, name="x")], name="same")

        def call(self, x):
            return self.b(self.a(x))

    twins = Twins()
    twins(np.zeros((1, 2), np.float32))
    assert twins.a.weights[0].path == twins.b.weights[0].path
    with pytest.raises(ValueError, match="several variables have the path"):
        ft.discriminative_optimizer(twins, {twins.a: 0.0}, 1e-3)
    ft.discriminative_optimizer(twins, {twins.a: 0.0, twins.b: 0.0}, 1e-3)  # same rate: fine
    opt = ft.discriminative_optimizer(model, {"d1": 1e-4}, 1e-3)
    config = keras.optimizers.serialize(opt)
    again = keras.optimizers.deserialize(config)
    assert isinstance(again, keras.optimizers.MultiOptimizer)
    assert sorted(float(o.learning_rate) for o in again.optimizers) == pytest.approx([1e-4, 1e-3])


def test_layerwise_decay():
    rates = ft.layerwise_decay(["a", "b", "c"], 1e-3)
    assert list(rates) == ["a", "b", "c"]
    np.testing.assert_allclose(list(rates.values()), [1e-3 / 2.6 ** 2, 1e-3 / 2.6, 1e-3])
    with pytest.raises(ValueError, match="decay"):
        ft.layerwise_decay(["a"], 1e-3, decay=0.0)
