"""The NumPy optimizers against Keras: every registry case with a Keras twin
against keras.optimizers.<Name> (TF backend, eager) on the same float32
inputs: variables and every slot variable after each of 7 steps, with a
constant learning rate and with a schedule."""

from __future__ import annotations

import zlib

import numpy as np
import pytest

import keras  # conftest selects the TensorFlow backend
from registry import (
    KERAS_CASES,
    KERAS_SHAPES,
    NUM_STEPS,
    assert_lists_close,
    grad_sequence,
    make_arrays,
)

assert keras.backend.backend() == "tensorflow"

# fusedopt slot name -> the Keras optimizer attribute holding that slot's
# variables (one per model variable, in variable order).
KERAS_SLOT_ATTRS = {
    "SGD": {"momentum": "momentums"},
    "RMSprop": {"velocity": "_velocities", "momentum": "_momentums",
                "average_gradient": "_average_gradients"},
    "Adagrad": {"accumulator": "_accumulators"},
    "Adadelta": {"accumulated_grad": "_accumulated_grads",
                 "accumulated_delta_var": "_accumulated_delta_vars"},
    "Adam": {"momentum": "_momentums", "velocity": "_velocities", "velocity_hat": "_velocity_hats"},
    "AdamW": {"momentum": "_momentums", "velocity": "_velocities", "velocity_hat": "_velocity_hats"},
    "Adamax": {"momentum": "_m", "norm": "_u"},
    "Nadam": {"momentum": "_momentums", "velocity": "_velocities"},
    "Ftrl": {"accumulator": "_accumulators", "linear": "_linears"},
    "Lion": {"momentum": "_momentums"},
    "Lamb": {"momentum": "_momentums", "velocity": "_velocities"},
    "Adafactor": {"r": "_r", "c": "_c", "velocity": "_v"},
    "ScheduleFreeAdamW": {"momentum": "_momentums", "velocity": "_velocities"},
    "Muon": {"momentum": "momentums", "velocity": "adam_velocities"},
}


class _Decay(keras.optimizers.schedules.LearningRateSchedule):
    """base * 0.8 ** step, as a Keras schedule (called with `iterations`)."""

    def __init__(self, base):
        self.base = base

    def __call__(self, step):
        return self.base * keras.ops.power(0.8, keras.ops.cast(step, "float32"))


def keras_slot_order(kopt, names) -> list[str]:
    """Slot names in the order Keras creates them, read from variable paths
    ('<optimizer>/<variable>_<slot>')."""
    order = []
    for v in kopt.variables:
        for name in names:
            for slot in KERAS_SLOT_ATTRS[type(kopt).__name__]:
                if v.path.endswith(f"/{name}_{slot}") and slot not in order:
                    order.append(slot)
    return order


@pytest.mark.parametrize("schedule", [False, True], ids=["constant-lr", "schedule"])
@pytest.mark.parametrize("case", KERAS_CASES, ids=lambda c: c.id)
def test_matches_keras_after_each_step(case, schedule):
    name = case.cls.__name__
    shapes = KERAS_SHAPES[case.kind]
    seed = zlib.crc32(f"keras/{case.id}".encode())
    rng = np.random.default_rng(seed)
    params = make_arrays(shapes, np.float32, rng)
    var_names = [f"w{i}" for i in range(len(shapes))]
    kvars = [keras.Variable(p.copy(), name=n) for p, n in zip(params, var_names)]

    base_lr = case.kwargs.get("learning_rate", 0.001)
    ours_kwargs, keras_kwargs = {}, dict(case.keras_kwargs)
    if schedule:
        ours_kwargs["learning_rate"] = lambda step: base_lr * 0.8 ** step
        keras_kwargs["learning_rate"] = _Decay(base_lr)
    opt = case.make(params, **ours_kwargs)
    kopt = getattr(keras.optimizers, name)(**keras_kwargs)
    kopt.build(kvars)

    attrs = KERAS_SLOT_ATTRS[name]
    assert set(opt.slots) <= set(attrs)
    present = [s for s in opt.slots if getattr(kopt, attrs[s], None)]
    assert present == list(opt.slots), "Keras keeps the same slots"
    named = keras_slot_order(kopt, var_names)
    assert named == [s for s in opt.slots if s in named], "slot order"

    def keras_slots(slot):
        return [None if v is None else np.asarray(v.numpy(), np.float32)
                for v in getattr(kopt, attrs[slot])]

    for slot in opt.slots:
        assert_lists_close(opt.slots[slot], keras_slots(slot), np.float32, f"initial {slot}")

    for t, grads in enumerate(grad_sequence(shapes, np.float32, seed + 1), start=1):
        opt.step(grads)
        kopt.apply_gradients(zip([g.copy() for g in grads], kvars))
        assert opt.iterations == int(kopt.iterations.numpy()) == t
        assert_lists_close(params, [v.numpy() for v in kvars], np.float32, f"step {t}: variables")
        for slot in opt.slots:
            assert_lists_close(opt.slots[slot], keras_slots(slot), np.float32, f"step {t}: {slot}")
        if name == "Nadam":
            assert opt.state_dict()["extra"]["u_product"] == pytest.approx(
                float(kopt._u_product.numpy()), rel=1e-6)
    assert t == NUM_STEPS
    if name == "Muon":  # Keras picked Adam for exactly the non-2-D variables
        assert [v is not None for v in kopt.adam_velocities] == [len(s) != 2 for s in shapes]


@pytest.mark.parametrize("case", KERAS_CASES, ids=lambda c: c.id)
def test_config_matches_keras(case):
    """Same argument names and defaults: every key both configs have agrees."""
    ours = case.make([np.zeros((3, 4), np.float32)]).get_config()
    theirs = getattr(keras.optimizers, case.cls.__name__)(**case.keras_kwargs).get_config()
    shared = (set(ours) & set(theirs)) - {"name"}
    assert set(ours) - shared - {"name"} <= {"dampened", "x_from_new_z"}
    for key in shared:
        if isinstance(ours[key], float) and isinstance(theirs[key], float):
            assert ours[key] == pytest.approx(theirs[key], rel=1e-7), key  # Keras keeps lr in float32
        else:
            assert ours[key] == theirs[key], key


CLIP_CASES = [c for c in KERAS_CASES if c.id in ("sgd-momentum-wd", "adam-wd", "lamb", "adafactor")]


@pytest.mark.parametrize("clip", [{"clipnorm": 0.5}, {"clipvalue": 0.3}, {"global_clipnorm": 0.8}],
                         ids=lambda d: "+".join(d))
@pytest.mark.parametrize("case", CLIP_CASES, ids=lambda c: c.id)
def test_gradient_clipping_matches_keras(case, clip):
    shapes = KERAS_SHAPES[case.kind]
    rng = np.random.default_rng(21)
    params = make_arrays(shapes, np.float32, rng)
    kvars = [keras.Variable(p.copy(), name=f"w{i}") for i, p in enumerate(params)]
    opt = case.make(params, **clip)
    kopt = getattr(keras.optimizers, case.cls.__name__)(**case.keras_kwargs, **clip)
    for t, grads in enumerate(grad_sequence(shapes, np.float32, 22), start=1):
        grads = [2 * g for g in grads]  # norms well above the thresholds
        originals = [g.copy() for g in grads]
        opt.step(grads)
        kopt.apply_gradients(zip([g.copy() for g in grads], kvars))
        for g, g0 in zip(grads, originals):  # clipping works on copies
            np.testing.assert_array_equal(g, g0)
        assert_lists_close(params, [v.numpy() for v in kvars], np.float32, f"step {t}: variables")
