"""fusedopt.keras on Keras's JAX backend: the update is one XLA FFI custom call
(cpp/xla, through `_xla_library.fused_update`) over every variable of a dtype
group, against keras.optimizers.X on the same backend.

Runs in a process of its own on the JAX backend
(``KERAS_BACKEND=jax python -m pytest tests/jax``).
"""

from __future__ import annotations

import os
import re

import jax
import jax.numpy as jnp
import keras
import numpy as np
import pytest

import fusedopt.keras as fk
from fusedopt.keras import _xla_library
from keras_helpers import (ATOL, CASE_IDS, CASES, FEATURE_CASES, RTOL, assert_one_step_tight,
                           assert_save_load_continues_bitwise, compare_fit, compare_with_fallback, run_python)

assert keras.backend.backend() == "jax", "run tests/jax with KERAS_BACKEND=jax"

JIT = [pytest.param(True, id="jit"), pytest.param(False, id="eager")]


def test_handler_loads():
    assert _xla_library.usable(), _xla_library.status()
    assert _xla_library.status()["loaded"]


@pytest.mark.parametrize("jit_compile", JIT)
@pytest.mark.parametrize("case", CASE_IDS)
def test_fit_matches_builtin(case, jit_compile):
    """model.fit, 6 steps: weights and every optimizer variable as the built-in's."""
    _, name, kwargs = CASES[case]
    # Muon's Newton-Schulz iteration (Keras's, on both sides) amplifies the
    # float32-level differences its Adam variables feed into later gradients.
    atol = 2 * ATOL if name == "Muon" else ATOL
    compare_fit(name, kwargs, fit_kwargs={"jit_compile": jit_compile}, atol=atol)


@pytest.mark.parametrize("case", CASE_IDS)
def test_one_step_is_tight(case):
    """As tests/test_keras_numerics.py on TensorFlow (see assert_one_step_tight)."""
    _, name, kwargs = CASES[case]
    assert_one_step_tight(name, kwargs, jit_compile=True)


@pytest.mark.parametrize("jit_compile", JIT)
@pytest.mark.parametrize("case", FEATURE_CASES, ids=[c[0] for c in FEATURE_CASES])
def test_features_stay_kerass(case, jit_compile):
    _, name, kwargs = case
    compare_fit(name, kwargs, fit_kwargs={"jit_compile": jit_compile})


@pytest.mark.parametrize("jit_compile", JIT)
def test_regularization_matches_kerass_update_with_the_extras(jit_compile):
    compare_with_fallback("Adam", {"learning_rate": 0.01, "l1": 1e-3, "l2": 1e-2, "proximal_l1": 1e-3},
                          _xla_library, jit_compile)


def test_loss_scale_optimizer():
    compare_fit("Adam", {"learning_rate": 0.01},
                wrap=lambda o: keras.optimizers.LossScaleOptimizer(o, initial_scale=2.0 ** 8),
                fit_kwargs={"jit_compile": True})


@pytest.mark.parametrize("case", CASE_IDS)
def test_stateless_apply_in_jit(case):
    """optimizer.stateless_apply under jax.jit with donated state, 7 steps."""
    _, name, kwargs = CASES[case]
    rng = np.random.default_rng(3)
    shapes = [(3, 4, 5), (7,), (6, 2)]
    initial = [rng.normal(size=s).astype("float32") for s in shapes]
    results = []
    for module in (keras.optimizers, fk):
        optimizer = getattr(module, name)(**kwargs)
        variables = [keras.Variable(w, name=f"w{i}") for i, w in enumerate(initial)]
        if name == "Muon":
            optimizer.exclude_layers = []
        optimizer.build(variables)
        step = jax.jit(optimizer.stateless_apply, donate_argnums=(0, 2))
        opt_values = [v.value for v in optimizer.variables]
        values = [v.value for v in variables]
        grad_rng = np.random.default_rng(7)
        for _ in range(7):
            grads = [jnp.asarray(grad_rng.normal(size=s).astype("float32")) for s in shapes]
            values, opt_values = step(opt_values, grads, values)
        results.append([np.asarray(v) for v in values] + [np.asarray(v) for v in opt_values])
    for i, (a, b) in enumerate(zip(*results)):
        np.testing.assert_allclose(b, a, rtol=RTOL, atol=ATOL, err_msg=f"{case}: value {i}")


def _lowered_apply(optimizer, shapes, dtype="float32"):
    """The update lowered as Keras's train step runs it: jitted, with the params and
    the optimizer variables donated, params first (JAX pairs each donated input with
    the first output of its shape and dtype, so this order lets each update in place)."""
    variables = [keras.Variable(np.full(s, 0.5, dtype), name=f"w{i}") for i, s in enumerate(shapes)]
    optimizer.build(variables)
    grads = [jnp.full(s, 0.1, dtype) for s in shapes]

    def update(params, opt_values, grads):
        return optimizer.stateless_apply(opt_values, grads, params)

    return jax.jit(update, donate_argnums=(0, 1)).lower(
        [v.value for v in variables], [v.value for v in optimizer.variables], grads)


@pytest.mark.parametrize("case", CASE_IDS)
def test_one_custom_call_per_step(case):
    """The jitted update holds exactly one fusedopt custom call (one dtype group), every
    parameter is aliased to its result and nothing is copied: the update is in place."""
    _, name, kwargs = CASES[case]
    optimizer = getattr(fk, name)(**kwargs)
    shapes = [(64, 32), (32,), (8, 4, 4)]
    if name == "Muon":
        optimizer.exclude_layers = []  # every variable a Muon matrix or an Adam vector
    lowered = _lowered_apply(optimizer, shapes)
    calls = re.findall(r"custom_call @(fusedopt_\w+)", lowered.as_text())
    assert calls == ["fusedopt_" + optimizer._fused_rule()], calls
    compiled = lowered.compile().as_text()
    aliased = {int(p) for p in re.findall(r"\(\s*(\d+)\s*,\s*\{\}\s*,\s*(?:may|must)-alias\)", compiled)}
    assert set(range(len(shapes))) <= aliased, sorted(aliased)  # the params: arguments 0..
    if name != "Muon":  # (Muon's matrices take Keras's update, which XLA may stage through copies)
        # (a scalar, e.g. the iteration count read twice, may be copied)
        copies = [line.strip()[:120] for line in compiled.splitlines()
                  if " copy(" in line and not re.search(r"= \w+\[\] copy\(", line)]
        assert not copies, copies


def test_weight_decay_exclusion_makes_two_groups():
    optimizer = fk.AdamW(learning_rate=0.01, weight_decay=0.1)
    optimizer.exclude_from_weight_decay(var_names=["w1"])
    text = _lowered_apply(optimizer, [(4, 4), (4,)]).as_text()
    assert len(re.findall(r"custom_call @fusedopt_adam", text)) == 2


def test_adan_fused_matches_its_keras_update():
    """Adan (no Keras built-in): the custom call against its own keras.ops update_step."""
    compare_with_fallback("Adan", {"learning_rate": 0.01, "weight_decay": 0.02}, _xla_library, True)


def test_bad_hyperparameter_is_a_value_error():
    with pytest.raises(ValueError, match="beta_3"):
        fk.Adan(beta_3=1.5)


def test_save_and_load_continue_bitwise(tmp_path):
    """A .keras file saved after 3 steps continues bitwise in a fresh process."""
    assert_save_load_continues_bitwise(tmp_path, "jax", jit_compile=True)


def test_disabled_handler_falls_back_with_one_warning():
    run_python("""
        import warnings, numpy as np, keras
        import fusedopt.keras as fk
        from fusedopt.keras import _xla_library
        x = np.ones((16, 3), "float32"); y = np.ones((16, 1), "float32")
        results = []
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for module in (keras.optimizers, fk):
                keras.utils.set_random_seed(0)
                model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
                model.compile(optimizer=module.Adam(0.01), loss="mse")
                model.fit(x, y, batch_size=4, verbose=0)
                model.fit(x, y, batch_size=4, verbose=0)
                results.append([w.numpy() for w in model.weights])
        ours = [w for w in caught if "fusedopt" in str(w.message)]
        assert len(ours) == 1 and "FUSEDOPT_DISABLE_XLA_OPS" in str(ours[0].message), [str(w.message) for w in ours]
        for a, b in zip(*results):
            np.testing.assert_array_equal(a, b)
        assert not _xla_library.status()["loaded"]
    """, env={"KERAS_BACKEND": "jax", "FUSEDOPT_DISABLE_XLA_OPS": "1"})


def test_data_parallel_two_devices_equals_one():
    """keras.distribution.DataParallel over 2 host devices: the built-in's numbers
    (its replicated variables take Keras's update), equal to single-device training."""
    run_python("""
        import numpy as np, keras, sys
        sys.path.insert(0, %r)
        import fusedopt.keras as fk
        from keras_helpers import data, make_model
        import jax
        assert len(jax.devices()) == 2
        x, y = data()
        results = []
        for distributed in (False, True):
            keras.distribution.set_distribution(
                keras.distribution.DataParallel(devices=jax.devices()) if distributed else None)
            model = make_model()
            model.compile(optimizer=fk.Adam(learning_rate=0.01), loss="mse", jit_compile=True)
            model.fit(x, y, batch_size=8, shuffle=False, verbose=0)
            results.append([np.asarray(w.numpy()) for w in model.weights])
        for a, b in zip(*results):
            np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
    """ % os.path.dirname(os.path.dirname(__file__)),
               env={"KERAS_BACKEND": "jax", "XLA_FLAGS": "--xla_force_host_platform_device_count=2"})


def test_size_threshold_routes_small_variables_to_kerass_update(monkeypatch):
    """By default variables under DEFAULT_MIN_FUSED_SIZE elements take Keras's update
    (XLA fuses it; a custom-call operand costs more): one custom call over the large
    variable only, and the numbers are the built-in's."""
    monkeypatch.delenv(_xla_library.MIN_FUSED_SIZE_ENV)
    size = _xla_library.DEFAULT_MIN_FUSED_SIZE
    shapes = [(size // 64, 64), (size - 1,), (7,)]
    optimizer = fk.Adam(learning_rate=0.01)
    seen = []
    original = _xla_library.fused_update

    def probe(rule, hyper, params, *args, **kwargs):
        seen.append([tuple(p.shape) for p in params])
        return original(rule, hyper, params, *args, **kwargs)

    monkeypatch.setattr(_xla_library, "fused_update", probe)
    text = _lowered_apply(optimizer, shapes).as_text()
    assert len(re.findall(r"custom_call @fusedopt_adam", text)) == 1
    assert seen == [[shapes[0]]]
    monkeypatch.setenv(_xla_library.MIN_FUSED_SIZE_ENV, "many")
    with pytest.raises(ValueError, match=_xla_library.MIN_FUSED_SIZE_ENV):
        _lowered_apply(fk.Adam(), shapes)
