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
from keras_helpers import (CASE_IDS, CASES, FEATURE_CASES, assert_one_step_tight, assert_save_load_continues_bitwise,
                           compare_fit, compare_with_fallback, make_model, run_python)


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
    _, name, kwargs = CASES[case]
    assert_one_step_tight(name, kwargs, jit_compile=True)


@pytest.mark.parametrize("case", FEATURE_CASES, ids=[c[0] for c in FEATURE_CASES])
def test_features_under_xla_stay_kerass(case):
    _, name, kwargs = case
    compare_fit(name, kwargs, fit_kwargs={"jit_compile": True})


def test_loss_scale_optimizer_under_xla():
    compare_fit("Adam", {"learning_rate": 0.01},
                wrap=lambda o: keras.optimizers.LossScaleOptimizer(o, initial_scale=2.0 ** 8),
                fit_kwargs={"jit_compile": True})


def test_regularization_under_xla_matches_kerass_update_with_the_extras():
    """l1/l2/proximal_l1 in the custom call against Keras's update with the same extras."""
    compare_with_fallback("Adam", {"learning_rate": 0.01, "l1": 1e-3, "l2": 1e-2, "proximal_l1": 1e-3},
                          _op_library, jit_compile=True)


def test_adan_under_xla_matches_its_keras_update():
    compare_with_fallback("Adan", {"learning_rate": 0.01, "weight_decay": 0.02}, _op_library, jit_compile=True)


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


def test_save_and_load_under_xla_continue_bitwise(tmp_path):
    """A .keras file saved after 3 steps under XLA continues bitwise in a fresh process
    (the loaded model compiles with jit_compile=True too: it is saved in the config)."""
    assert_save_load_continues_bitwise(tmp_path, "tensorflow", jit_compile=True)
