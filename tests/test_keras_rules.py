"""fusedopt.keras optimizers for rules Keras does not ship (Adan, ...), found
from the registry: every class of fusedopt.keras.optimizers.__all__ without a
keras.optimizers twin. Each must train a model with its fused op exactly as
its own ``keras.ops`` update_step (Keras's update, which runs on the other
backends and under XLA) does, match the NumPy optimizer of the same name and
the float64 reference step by step, and save, load and deserialize as a Keras
optimizer does.
"""

from __future__ import annotations

import keras_helpers as kh  # noqa: I001 - sets the Keras backend first
import keras
import numpy as np
import pytest

import fusedopt
import fusedopt.keras as fk
from reference import Reference

NEW_RULES = [name for name in fk.optimizers.__all__ if not hasattr(keras.optimizers, name)]


def test_registry_finds_the_rules_keras_lacks():
    assert "Adan" in NEW_RULES
    for name in NEW_RULES:
        assert hasattr(fusedopt, name), f"fusedopt.keras.{name} has no NumPy twin fusedopt.{name}"


class _KerasUpdateOnly:
    """The same optimizer with the fused op turned off: its update_step only."""

    def _fused_possible(self):
        return False


def _keras_update_only(cls):
    return type(cls.__name__, (_KerasUpdateOnly, cls), {})


@pytest.mark.parametrize("weight_decay", [None, 0.05])
@pytest.mark.parametrize("name", NEW_RULES)
def test_fused_step_is_its_keras_update(name, weight_decay):
    runs = []
    for cls in (_keras_update_only(getattr(fk, name)), getattr(fk, name)):
        model = kh.make_model()
        with kh.fused_op_probe() as calls:
            kh.fit(cls(learning_rate=0.01, weight_decay=weight_decay), model, epochs=2)
        runs.append((model, model.optimizer, calls))
    (model_a, opt_a, calls_a), (model_b, opt_b, calls_b) = runs
    assert not calls_a and calls_b, "expected Keras's update first, then the fused op"
    kh.assert_same_training(model_a, opt_a, model_b, opt_b)


@pytest.mark.parametrize("jit_compile", [False, True])
@pytest.mark.parametrize("name", NEW_RULES)
def test_matches_numpy_and_float64_reference(name, jit_compile):
    """apply_gradients on plain variables, step by step, against fusedopt.<name>
    and the float64 reference (tests/reference.py) on the same gradients."""
    import tensorflow as tf

    rng = np.random.default_rng(3)
    shapes = [(5,), (3, 4), (2, 3, 2)]
    initial = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    kwargs = {"learning_rate": 0.02, "weight_decay": 0.01}
    variables = [keras.Variable(p) for p in initial]
    ours = getattr(fk, name)(**kwargs)
    numpy_params = [p.copy() for p in initial]
    numpy_opt = getattr(fusedopt, name)(numpy_params, **kwargs)
    reference = Reference(name, kwargs, initial)

    step = tf.function(lambda grads: ours.apply_gradients(zip(grads, variables)),
                       jit_compile=jit_compile)
    for _ in range(6):
        grads = [rng.standard_normal(s).astype(np.float32) for s in shapes]
        step([tf.constant(g) for g in grads])
        numpy_opt.step(grads)
        reference.step(grads)
    for i, v in enumerate(variables):
        kh.assert_close(v.numpy(), numpy_opt.params[i], what=f"{name} vs fusedopt.{name}: param {i}")
        kh.assert_close(v.numpy(), reference.params[i], what=f"{name} vs float64 reference: param {i}")
    states = fusedopt.ops.RULES[ours._rule]["states"]
    assert list(reference.slots) == states
    for k, (slot, arrays) in enumerate(reference.slots.items()):
        ours_slots = [ours._slots_of(v)[k] for v in variables]
        for i, (a, e) in enumerate(zip(ours_slots, arrays)):
            kh.assert_close(a.numpy(), e, what=f"{name} slot {slot}[{i}]", scaled_atol=True)


@pytest.mark.parametrize("name", NEW_RULES)
def test_config_and_checkpoint_round_trip(name, tmp_path):
    cls = getattr(fk, name)
    opt = cls(learning_rate=0.003, weight_decay=0.01, l2=1e-4)
    config = opt.get_config()
    again = cls.from_config(config)
    assert again.get_config() == config
    assert keras.optimizers.deserialize(keras.optimizers.serialize(opt)).get_config() == config

    model = kh.make_model()
    kh.fit(opt, model)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert type(loaded.optimizer).__name__ == name
    for a, b in zip(kh.optimizer_state(opt), kh.optimizer_state(loaded.optimizer)):
        assert a[0] == b[0] and a[1] == b[1]
        np.testing.assert_array_equal(a[2], b[2])
    # Training continues from the loaded state as from the original one.
    x, y = kh.data(seed=1)
    kh.fit(model.optimizer, model, x, y)
    kh.fit(loaded.optimizer, loaded, x, y)
    kh.assert_same_training(model, model.optimizer, loaded, loaded.optimizer)


@pytest.mark.parametrize("name", NEW_RULES)
def test_bad_hyperparameters_are_named(name):
    """Each of the rule's hyperparameters (the registry's names) is checked when
    the optimizer is made, with an error naming it."""
    cls = getattr(fk, name)
    for hyper in fusedopt.ops.RULES[cls._rule]["hyper"]:
        with pytest.raises(TypeError, match=hyper):
            cls(**{hyper: "not a number"})
        with pytest.raises(ValueError, match=hyper):
            cls(**{hyper: float("nan")})
