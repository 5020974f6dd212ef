"""fusedopt.keras under TensorFlow's XLA (``jit_compile=True``): the fused update
op's XLA kernel (cpp/tf/fused_update_xla.cc) emits one custom call over all of
its variables, aliased in place, against keras.optimizers.X under XLA.
"""

from __future__ import annotations

import re
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

import fusedopt.keras as fk
from fusedopt.keras import _op_library
from keras_helpers import (BATCH, CASE_IDS, CASES, assert_close, assert_same_training, compare_fit, data, fit,
                           fused_op_probe, make_model, optimizer_state, run_python)


def test_op_library_has_xla_kernels():
    status = fk.prebuild()
    assert status["xla_kernels"], status["xla_error"]


@pytest.mark.parametrize("case", CASE_IDS)
def test_fit_under_xla_matches_builtin(case):
    """model.fit with jit_compile=True, 6 steps: weights and every optimizer variable."""
    _, name, kwargs = CASES[case]
    compare_fit(name, kwargs, fit_kwargs={"jit_compile": True})


@pytest.mark.parametrize("case", CASE_IDS)
def test_one_step_under_xla_is_tight(case):
    """One step: optimizer variables to 1e-6 relative, weight updates to 1e-5 (Keras's
    Adam family computes 1 - beta_2^t in float32), as test_keras_numerics does outside XLA."""
    _, name, kwargs = CASES[case]
    x, y = data(n=BATCH)
    initial = make_model().get_weights()
    runs = []
    for module in (keras.optimizers, fk):
        optimizer = getattr(module, name)(**kwargs)
        with fused_op_probe() as calls:
            model = fit(optimizer, make_model(), x, y, jit_compile=True)
        runs.append((model.get_weights(), optimizer_state(optimizer), calls))
    (wa, sa, _), (wb, sb, calls) = runs
    assert calls, "the fused op was never traced into the XLA train step"
    for i, (w0, a, b) in enumerate(zip(initial, wa, wb)):
        assert_close(b - w0, a - w0, 1e-5, 1e-5, f"update of weight {i}", scaled_atol=True)
    for i, ((n, _, a), (_, _, b)) in enumerate(zip(sa, sb)):
        assert_close(b, a, 1e-6, 1e-6, f"optimizer variable {i} ({n})", scaled_atol=True)


FEATURES = [
    ("ema", "Adam", {"learning_rate": 0.01, "use_ema": True, "ema_momentum": 0.9,
                     "ema_overwrite_frequency": 3}),
    ("accumulation", "Adam", {"learning_rate": 0.01, "gradient_accumulation_steps": 2}),
    ("weight_decay", "SGD", {"learning_rate": 0.05, "momentum": 0.9, "weight_decay": 0.1}),
    ("schedule", "Adam", {"learning_rate": keras.optimizers.schedules.ExponentialDecay(0.02, 2, 0.5)}),
    ("clipnorm", "Adagrad", {"learning_rate": 0.05, "clipnorm": 0.1}),
    ("global_clipnorm", "Lion", {"learning_rate": 0.003, "global_clipnorm": 0.1}),
    ("clipvalue", "Nadam", {"learning_rate": 0.01, "clipvalue": 0.01}),
]


@pytest.mark.parametrize("case", FEATURES, ids=[c[0] for c in FEATURES])
def test_features_under_xla_stay_kerass(case):
    _, name, kwargs = case
    compare_fit(name, kwargs, fit_kwargs={"jit_compile": True})


def test_loss_scale_optimizer_under_xla():
    compare_fit("Adam", {"learning_rate": 0.01},
                wrap=lambda o: keras.optimizers.LossScaleOptimizer(o, initial_scale=2.0 ** 8),
                fit_kwargs={"jit_compile": True})


def test_regularization_under_xla_matches_kerass_update_with_the_extras(monkeypatch):
    """l1/l2/proximal_l1 in the custom call against Keras's update with the same extras."""
    kwargs = {"learning_rate": 0.01, "l1": 1e-3, "l2": 1e-2, "proximal_l1": 1e-3}
    runs = []
    for fused in (False, True):
        optimizer = fk.Adam(**kwargs)
        with monkeypatch.context() as m:
            if not fused:
                m.setattr(_op_library, "usable", lambda: False)
            with fused_op_probe() as calls:
                model = fit(optimizer, make_model(), jit_compile=True)
        assert bool(calls) == fused
        runs.append((model, optimizer))
    assert_same_training(*runs[0], *runs[1])


def _apply_hlo(optimizer, shapes):
    variables = [keras.Variable(np.full(s, 0.5, "float32"), name=f"w{i}") for i, s in enumerate(shapes)]
    optimizer.build(variables)
    grads = [tf.constant(np.full(s, 0.1, "float32")) for s in shapes]

    @tf.function(jit_compile=True)
    def apply(grads):
        optimizer.apply(grads, variables)

    return apply.experimental_get_compiler_ir(grads)(stage="hlo")


@pytest.mark.parametrize("case", CASE_IDS)
def test_one_custom_call_per_dtype_group(case):
    """The compiled step holds exactly one fusedopt custom call, with its results
    aliased to the variables' values (the update is in place)."""
    _, name, kwargs = CASES[case]
    optimizer = getattr(fk, name)(**kwargs)
    if name == "Muon":
        optimizer.exclude_layers = []
    hlo = _apply_hlo(optimizer, [(64, 32), (32,), (8, 4, 4)])
    targets = re.findall(r'custom_call_target="(fusedopt_\w+)"', hlo)
    assert targets == ["fusedopt_" + optimizer._fused_rule()], targets
    assert "output_to_operand_aliasing" in hlo


def test_float64_under_xla():
    def model_fn():
        return make_model(dtype="float64")

    _, _, _, _, calls = compare_fit("Adam", {"learning_rate": 0.01}, model_fn=model_fn,
                                    fit_kwargs={"jit_compile": True})
    assert calls


def test_xla_compilation_before_the_library_loads():
    """TensorFlow registers XLA kernels at its first XLA compilation: one that comes
    before fusedopt's library loads must not leave the fused op without its kernel."""
    run_python("""
        import numpy as np, keras, tensorflow as tf
        tf.function(lambda x: x * 2, jit_compile=True)(tf.constant(1.0))  # XLA first
        import fusedopt.keras as fk
        from keras_helpers import fused_op_probe
        x, y = np.ones((32, 8), "float32"), np.ones((32, 3), "float32")
        model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(3)])
        model.compile(optimizer=fk.Adam(0.01), loss="mse", jit_compile=True)
        with fused_op_probe() as calls:
            model.fit(x, y, batch_size=8, verbose=0)
        assert calls and fk.op_library_status()["xla_kernels"]
    """, cwd=str(Path(__file__).resolve().parent))
