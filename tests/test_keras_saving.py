"""Serialization and checkpoints of the fusedopt.keras drop-ins.

get_config/from_config and keras.saving (de)serialization; model.save("m.keras")
reloaded in a fresh process (``import fusedopt.keras`` before load_model)
with its optimizer state, continuing training identically; optimizer state
moving between the built-in and fusedopt's optimizer in both directions,
through a .keras file and through tf.train.Checkpoint.
"""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

import fusedopt.keras as fk
from keras_helpers import (
    CASES,
    CASE_IDS,
    assert_close,
    assert_same_training,
    data,
    fit,
    make_model,
    optimizer_state,
    run_python,
)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


# -- config ---------------------------------------------------------------------------
@pytest.mark.parametrize("case", CASE_IDS)
def test_config_round_trip(case):
    _, name, kwargs = CASES[case]
    ours = getattr(fk, name)(**kwargs)
    built_in = getattr(keras.optimizers, name)(**kwargs)
    config = ours.get_config()
    reference = built_in.get_config()
    config.pop("name"), reference.pop("name")
    assert config == reference  # same keys, same values, same defaults
    clone = type(ours).from_config(ours.get_config())
    assert type(clone) is type(ours) and clone.get_config() == ours.get_config()
    serialized = keras.saving.serialize_keras_object(ours)
    assert serialized["registered_name"] == f"fusedopt>{name}"
    json.dumps(serialized)
    for restored in (keras.saving.deserialize_keras_object(serialized),
                     keras.optimizers.deserialize(dict(serialized)),
                     keras.optimizers.get(dict(serialized))):
        assert type(restored) is type(ours)
        assert restored.get_config() == ours.get_config()


def test_config_with_schedule_and_features():
    schedule = keras.optimizers.schedules.CosineDecay(0.01, 100, warmup_target=0.02, warmup_steps=5)
    ours = fk.AdamW(learning_rate=schedule, weight_decay=0.1, clipnorm=1.0, use_ema=True,
                    ema_overwrite_frequency=3, gradient_accumulation_steps=2, loss_scale_factor=4.0,
                    amsgrad=True)
    restored = keras.saving.deserialize_keras_object(
        json.loads(json.dumps(keras.saving.serialize_keras_object(ours))))
    assert type(restored) is fk.AdamW
    assert isinstance(restored._learning_rate, keras.optimizers.schedules.CosineDecay)
    assert restored.get_config() == ours.get_config()
    wrapped = keras.optimizers.LossScaleOptimizer(fk.Adam(0.01))
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(wrapped))
    assert type(restored.inner_optimizer) is fk.Adam


def test_compile_by_string_is_still_the_builtin():
    """fusedopt does not hijack Keras's names: "adam" stays keras.optimizers.Adam."""
    model = make_model()
    model.compile(optimizer="adam", loss="mse")
    assert type(model.optimizer) is keras.optimizers.Adam


# -- model.save and reload in a fresh process ----------------------------------------------
SAVE_CASES = {
    "adam": lambda: fk.Adam(0.01),
    "adamw-ema": lambda: fk.AdamW(0.01, weight_decay=0.1, use_ema=True, ema_momentum=0.5),
    "nadam": lambda: fk.Nadam(0.01),
    "adafactor": lambda: fk.Adafactor(0.05),
    "schedule-free": lambda: fk.ScheduleFreeAdamW(0.01, warmup_steps=4),
    "muon": lambda: fk.Muon(0.01, exclude_layers=["out"]),
    "sgd-schedule": lambda: fk.SGD(keras.optimizers.schedules.ExponentialDecay(0.05, 2, 0.5), momentum=0.9),
    "lamb-accumulation": lambda: fk.Lamb(0.01, gradient_accumulation_steps=2),
    "ftrl": lambda: fk.Ftrl(0.05, l1_regularization_strength=0.001),
    "loss-scale-rmsprop": lambda: keras.optimizers.LossScaleOptimizer(fk.RMSprop(0.01, centered=True)),
}

FRESH_PROCESS_SCRIPT = r"""
import json, sys
import numpy as np
import fusedopt.keras  # registers the fusedopt classes before load_model
import keras

work = sys.argv[1] if len(sys.argv) > 1 else {work!r}
cases = json.load(open(work + "/cases.json"))
more = np.load(work + "/more_data.npz")
report = {{}}
for case in cases:
    model = keras.saving.load_model(f"{{work}}/{{case}}.keras")
    opt = model.optimizer
    inner = getattr(opt, "inner_optimizer", opt)
    before = np.load(f"{{work}}/{{case}}-before.npz")
    saved = [before[f"opt{{i}}"] for i in range(len(before.files) - len(model.weights))]
    state = [v.numpy() for v in opt.variables]
    report[case] = {{
        "class": type(inner).__module__ + "." + type(inner).__name__,
        "num_variables": len(state),
        "state_equal": len(state) == len(saved) and all(np.array_equal(a, b) for a, b in zip(state, saved)),
        "weights_equal": all(np.array_equal(w, before[f"w{{i}}"]) for i, w in enumerate(model.get_weights())),
    }}
    model.fit(more["x"], more["y"], batch_size=8, epochs=1, shuffle=False, verbose=0)
    np.savez(f"{{work}}/{{case}}-after-fresh.npz",
             *[w for w in model.get_weights()], *[v.numpy() for v in opt.variables])
json.dump(report, open(work + "/report.json", "w"))
"""


def test_save_and_reload_in_fresh_process(tmp_path):
    x, y = data()
    x2, y2 = data(seed=7)
    np.savez(tmp_path / "more_data.npz", x=x2, y=y2)
    continued = {}
    for case, make in SAVE_CASES.items():
        model = make_model()
        opt = make()
        fit(opt, model, x, y)
        model.save(tmp_path / f"{case}.keras")
        np.savez(tmp_path / f"{case}-before.npz",
                 **{f"w{i}": w for i, w in enumerate(model.get_weights())},
                 **{f"opt{i}": v.numpy() for i, v in enumerate(opt.variables)})
        model.fit(x2, y2, batch_size=8, epochs=1, shuffle=False, verbose=0)  # continue here too
        continued[case] = [*model.get_weights(), *[v.numpy() for v in opt.variables]]
    (tmp_path / "cases.json").write_text(json.dumps(list(SAVE_CASES)))
    run_python(FRESH_PROCESS_SCRIPT.format(work=str(tmp_path)), timeout=300)
    report = json.loads((tmp_path / "report.json").read_text())
    for case in SAVE_CASES:
        info = report[case]
        assert info["class"].startswith("fusedopt.keras.optimizers."), (case, info)
        assert info["weights_equal"] and info["state_equal"], (case, info)
        after = np.load(tmp_path / f"{case}-after-fresh.npz")
        fresh = [after[f"arr_{i}"] for i in range(len(after.files))]
        assert len(fresh) == len(continued[case]), case
        for i, (a, b) in enumerate(zip(fresh, continued[case])):
            # Same op, same inputs: continuing in a fresh process is bitwise identical.
            np.testing.assert_array_equal(a, b, err_msg=f"{case}: array {i}")


# -- built-in <-> fusedopt state transfer --------------------------------------------------
TRANSFER_CASES = [("Adam", {"learning_rate": 0.01}), ("Nadam", {"learning_rate": 0.01}),
                  ("Adafactor", {"learning_rate": 0.05}),
                  ("SGD", {"learning_rate": 0.05, "momentum": 0.9}),
                  ("AdamW", {"learning_rate": 0.01, "weight_decay": 0.1, "use_ema": True})]


def _transfer(src_module, dst_module, name, kwargs, how, tmp_path):
    """Train 6 steps with src's optimizer, move model + optimizer state to a model
    compiled with dst's optimizer (after one step of its own), then both continue
    for 6 steps."""
    x, y = data()
    x2, y2 = data(seed=7)
    source_opt = getattr(src_module, name)(**kwargs)
    source = fit(source_opt, make_model(), x, y)
    target_opt = getattr(dst_module, name)(**kwargs)
    target = make_model(seed=1)  # different initial weights: all must come from the source
    target.compile(optimizer=target_opt, loss="mse", jit_compile=False)
    target_opt.build(target.trainable_variables)
    # One step first, so that the state loads into an optimizer that has already
    # run (fusedopt's op then holds its slots by reference: it must see the load).
    target.fit(x[:8], y[:8], batch_size=8, epochs=1, shuffle=False, verbose=0)
    if how == "keras_file":
        source.save(tmp_path / "source.keras")
        target.load_weights(tmp_path / "source.keras")
    else:
        prefix = tf.train.Checkpoint(model=source, optimizer=source_opt).write(str(tmp_path / "ckpt"))
        tf.train.Checkpoint(model=target, optimizer=target_opt).read(prefix).assert_consumed()
    assert_same_training(source, source_opt, target, target_opt, atol=0.0, rtol=0.0)
    assert int(target_opt.iterations.numpy()) == int(source_opt.iterations.numpy()) > 0
    for model in (source, target):
        model.fit(x2, y2, batch_size=8, epochs=1, shuffle=False, verbose=0)
    assert_same_training(source, source_opt, target, target_opt)


@pytest.mark.parametrize("name,kwargs", TRANSFER_CASES, ids=[c[0] for c in TRANSFER_CASES])
def test_builtin_state_loads_into_fusedopt(name, kwargs, tmp_path):
    _transfer(keras.optimizers, fk, name, kwargs, "keras_file", tmp_path)


@pytest.mark.parametrize("direction", ["builtin-to-fusedopt", "fusedopt-to-builtin"])
@pytest.mark.parametrize("name,kwargs", [TRANSFER_CASES[0], TRANSFER_CASES[4]], ids=["Adam", "AdamW"])
def test_tf_checkpoint_both_ways(name, kwargs, direction, tmp_path):
    src, dst = (keras.optimizers, fk) if direction == "builtin-to-fusedopt" else (fk, keras.optimizers)
    _transfer(src, dst, name, kwargs, "tf_checkpoint", tmp_path)


@pytest.mark.parametrize("name,kwargs", TRANSFER_CASES[:3], ids=[c[0] for c in TRANSFER_CASES[:3]])
def test_fusedopt_state_loads_into_builtin(name, kwargs, tmp_path):
    _transfer(fk, keras.optimizers, name, kwargs, "keras_file", tmp_path)


def test_fusedopt_checkpoint_loads_into_builtin_with_load_model(tmp_path):
    """A fusedopt .keras file opens as such; its optimizer weights also load into a
    model compiled with the built-in (set_weights over the same variable order)."""
    x, y = data()
    opt = fk.Adam(0.01)
    model = fit(opt, make_model(), x, y)
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    built_in = keras.optimizers.Adam(0.01)
    built_in.build(loaded.trainable_variables)
    built_in.set_weights([v.numpy() for v in loaded.optimizer.variables])
    for (_, _, a), (_, _, b) in zip(optimizer_state(opt), optimizer_state(built_in)):
        assert_close(b, a, 0.0, 0.0)
