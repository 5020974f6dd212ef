"""The fused op really runs, and the fallbacks really fall back.

- The traced graph of one apply_gradients holds exactly one Fusedopt* op for
  N variables, and grows by ~3 ops per variable (Keras's Adam: ~41); the
  slots reach it as one handle, so a step captures one handle per variable.
- XLA (jit_compile=True): one fused op in the graph (its XLA kernel, a custom
  call: tests/test_keras_xla.py); where the library has no XLA kernels,
  none, and the built-in's numbers exactly.
- Op library unavailable (FUSEDOPT_DISABLE_TF_OPS=1): one RuntimeWarning,
  Keras's update, the built-in's numbers.
- Another Keras backend (torch): fusedopt.keras optimizers train and match
  keras.optimizers.X there.
"""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

import fusedopt.keras as fk
from fusedopt.keras import _op_library
from keras_helpers import (
    CASES,
    CASE_IDS,
    assert_same_training,
    fit,
    fused_op_probe,
    make_model,
    optimizer_pair,
    run_python,
)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def step_function(optimizer, shapes, jit_compile=False):
    """The concrete function of one optimizer.apply_gradients over variables of `shapes`."""
    variables = [keras.Variable(np.full(s, 0.5, "float32"), name=f"v{i}") for i, s in enumerate(shapes)]
    optimizer.build(variables)

    @tf.function(jit_compile=jit_compile)
    def step(grads):
        optimizer.apply_gradients(zip(grads, variables))

    return step.get_concrete_function([tf.TensorSpec(s, tf.float32) for s in shapes])


def step_graph(optimizer, shapes, jit_compile=False):
    """The graph of one optimizer.apply_gradients over variables of `shapes`."""
    return step_function(optimizer, shapes, jit_compile).graph


def fused_ops(graph):
    return [op for op in graph.get_operations() if op.type.startswith("Fusedopt")]


@pytest.mark.parametrize("n", [10, 20])
def test_one_fused_op_for_all_variables(n):
    graph = step_graph(fk.Adam(0.01), [(4, 3)] * n)
    ops = fused_ops(graph)
    assert len(ops) == 1 and ops[0].type == "FusedoptAdam"
    # The 2n slots arrive as one FusedoptVariableList handle.
    assert ops[0].get_attr("num_tensors") == n and ops[0].get_attr("state_list")
    assert ops[0].get_attr("num_states") == 1
    assert ops[0].inputs[n].op.type == "Placeholder"  # a captured handle, made outside the step


def test_slots_used_earlier_in_the_step_go_as_handles():
    """A slot the function already uses (here assigned; an optimizer built in the
    trace does that) reaches the op as its own handle, so TF orders the op after."""
    opt = fk.Adam(0.01)
    variable = keras.Variable(np.full((4, 3), 0.5, "float32"))
    opt.build([variable])

    @tf.function
    def step(grad):
        opt._momentums[0].assign(opt._momentums[0] * 0.5)
        opt.apply_gradients([(grad, variable)])

    graph = step.get_concrete_function(tf.TensorSpec((4, 3), tf.float32)).graph
    (op,) = fused_ops(graph)
    assert not op.get_attr("state_list") and op.get_attr("num_states") == 2
    assert any(c.type == "AssignVariableOp" for c in op.control_inputs), op.control_inputs


def test_graph_grows_far_slower_than_builtin():
    sizes, captures = {}, {}
    for label, make in (("keras", lambda: keras.optimizers.Adam(0.01)), ("fusedopt", lambda: fk.Adam(0.01))):
        functions = [step_function(make(), [(4, 3)] * n) for n in (10, 20)]
        sizes[label] = [len(f.graph.get_operations()) for f in functions]
        captures[label] = [len(f.captured_inputs) for f in functions]
    per_var = {k: (v[1] - v[0]) / 10 for k, v in sizes.items()}
    # Measured with TF 2.21 / Keras 3.15: Keras 41 ops per variable, fusedopt 3
    # (the variable's captured handle, the gradient placeholder, one identity).
    assert per_var["fusedopt"] <= 4, per_var
    assert per_var["keras"] >= 10 * per_var["fusedopt"], per_var
    # Each captured resource costs microseconds per call: Keras captures the
    # variable and its two slots, fusedopt the variable only.
    captures_per_var = {k: (v[1] - v[0]) / 10 for k, v in captures.items()}
    assert captures_per_var == {"keras": 3, "fusedopt": 1}, captures_per_var


@pytest.mark.parametrize("case", CASE_IDS)
def test_every_optimizer_traces_one_fused_op(case):
    _, name, kwargs = CASES[case]
    # Muon sends 2-D variables to its own (Keras) rule; the others reach the op.
    graph = step_graph(getattr(fk, name)(**kwargs), [(4, 3, 2), (4,), (5, 3), (3,)])
    assert len(fused_ops(graph)) == 1, [op.type for op in fused_ops(graph)]


def test_weight_decay_exclusion_splits_into_two_ops():
    """Decay is one scalar per op: decayed and excluded variables go to two ops."""
    opt = fk.AdamW(0.01, weight_decay=0.1)
    opt.exclude_from_weight_decay(var_names=["v0"])
    assert len(fused_ops(step_graph(opt, [(4, 3), (3,), (2,)]))) == 2


# -- XLA -----------------------------------------------------------------------------------
def test_xla_tf_function_has_one_fused_op():
    graph = step_graph(fk.Adam(0.01), [(4, 3)] * 3, jit_compile=True)
    assert len(fused_ops(graph)) == 1


@pytest.fixture
def without_xla_kernels(monkeypatch):
    """The op library as one built where its XLA kernels failed to compile."""
    _op_library.load()
    monkeypatch.setitem(_op_library._state, "xla_kernels", False)


def test_xla_without_xla_kernels_has_no_fused_op(without_xla_kernels):
    graph = step_graph(fk.Adam(0.01), [(4, 3)] * 3, jit_compile=True)
    assert not fused_ops(graph)


@pytest.mark.parametrize("name,kwargs", [("Adam", {"learning_rate": 0.01}),
                                         ("AdamW", {"learning_rate": 0.01, "weight_decay": 0.1}),
                                         ("Nadam", {"learning_rate": 0.01})])
def test_xla_fit_without_xla_kernels_falls_back_to_keras_update(name, kwargs, without_xla_kernels):
    """model.compile(jit_compile=True) with no XLA kernels: Keras's own update, the
    built-in's numbers exactly."""
    built_in, ours = optimizer_pair(name, **kwargs)
    model_a = fit(built_in, jit_compile=True)
    with fused_op_probe() as calls:
        model_b = fit(ours, jit_compile=True)
    assert not calls
    assert_same_training(model_a, built_in, model_b, ours, atol=0.0, rtol=0.0)


# -- op library unavailable ---------------------------------------------------------------------
DISABLED_SCRIPT = r"""
import json, warnings
warnings.simplefilter("always")
import numpy as np, keras, tensorflow as tf
import fusedopt.keras as fk
from keras_helpers import make_model, data, fit, optimizer_pair, optimizer_state
from test_keras_graph import step_graph, fused_ops

report = {}
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    x, y = data()
    for name, kwargs in [("Adam", {"learning_rate": 0.01}),
                         ("AdamW", {"learning_rate": 0.01, "weight_decay": 0.1}),
                         ("Nadam", {"learning_rate": 0.01})]:
        a, b = optimizer_pair(name, **kwargs)
        ma, mb = fit(a, make_model(), x, y), fit(b, make_model(), x, y)
        same = all(np.array_equal(u, v) for u, v in zip(ma.get_weights(), mb.get_weights()))
        same &= all(np.array_equal(u[2], v[2]) for u, v in zip(optimizer_state(a), optimizer_state(b)))
        report[name] = same
    report["fused_ops_in_graph"] = len(fused_ops(step_graph(fk.Adam(0.01), [(4, 3)] * 3)))
warned = [w for w in caught if issubclass(w.category, RuntimeWarning) and "fusedopt" in str(w.message)]
report["runtime_warnings"] = [str(w.message) for w in warned]
report["status"] = fk.op_library_status()
print("REPORT" + json.dumps(report))
"""


def _report(proc):
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("REPORT")][-1]
    return json.loads(line[len("REPORT"):])


def test_op_library_disabled_falls_back_with_one_warning():
    proc = run_python(DISABLED_SCRIPT, env={"FUSEDOPT_DISABLE_TF_OPS": "1"}, cwd=str(_tests_dir()))
    report = _report(proc)
    assert report["Adam"] and report["AdamW"] and report["Nadam"], report
    assert report["fused_ops_in_graph"] == 0
    assert len(report["runtime_warnings"]) == 1, report["runtime_warnings"]
    assert "FUSEDOPT_DISABLE_TF_OPS" in report["runtime_warnings"][0]
    assert report["status"]["loaded"] is False and "FUSEDOPT_DISABLE_TF_OPS" in report["status"]["error"]


# -- another backend ----------------------------------------------------------------------------
TORCH_SCRIPT = r"""
import json
import numpy as np, keras
assert keras.backend.backend() == "torch"
import fusedopt.keras as fk

def model():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6, 3))
    x = keras.layers.Conv1D(4, 3, name="conv")(inputs)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(5, activation="tanh", name="hidden")(x)
    return keras.Model(inputs, keras.layers.Dense(2, name="out")(x))

rng = np.random.default_rng(0)
x = rng.normal(size=(48, 6, 3)).astype("float32"); y = rng.normal(size=(48, 2)).astype("float32")
report = {}
for name, kwargs in [("Adam", {"learning_rate": 0.01}), ("AdamW", {"learning_rate": 0.01, "weight_decay": 0.1}),
                     ("Nadam", {"learning_rate": 0.01}), ("SGD", {"learning_rate": 0.05, "momentum": 0.9}),
                     ("Adafactor", {"learning_rate": 0.05}), ("Muon", {"learning_rate": 0.01, "exclude_layers": ["out"]}),
                     ("ScheduleFreeAdamW", {"learning_rate": 0.01}), ("Lion", {"learning_rate": 0.003})]:
    results = []
    for cls in (getattr(keras.optimizers, name), getattr(fk, name)):
        m = model()
        opt = cls(**kwargs)
        m.compile(optimizer=opt, loss="mse")
        m.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
        results.append([np.asarray(w) for w in m.get_weights()]
                       + [keras.ops.convert_to_numpy(v.value) for v in opt.variables])
    a, b = results
    ours, built_in = cls(**kwargs), getattr(keras.optimizers, name)(**kwargs)
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(ours))
    report[name] = {"same_count": len(a) == len(b), "equal": all(np.array_equal(u, v) for u, v in zip(a, b)),
                    "trained": bool(np.abs(a[0] - model().get_weights()[0]).max() > 0),
                    # Keras's torch-specific class (if any) is under ours.
                    "is_builtin_class": isinstance(ours, type(built_in)) and isinstance(ours, cls),
                    "round_trip": isinstance(restored, cls) and restored.get_config() == ours.get_config()}
print("REPORT" + json.dumps(report))
"""


def test_torch_backend_matches_builtin():
    """Bitwise: off TensorFlow a fusedopt optimizer is the built-in, including
    Keras's torch-specific multi-tensor subclasses (regression: it used to run
    Keras's generic per-variable update, ~1e-6 relative apart and slower)."""
    pytest.importorskip("torch")
    report = _report(run_python(TORCH_SCRIPT, env={"KERAS_BACKEND": "torch"}))
    for name, info in report.items():
        assert all(info.values()), (name, info)


def _tests_dir():
    from pathlib import Path

    return Path(__file__).resolve().parent


def test_state_list_cache_never_hands_out_another_variables_list():
    """The cache is keyed by ids: an entry whose variables are not these (an id
    reused after its variable was freed) is made anew, never reused."""
    lists = fk.optimizers._StateLists()
    first = [tf.Variable(np.zeros(3, "float32")), tf.Variable(np.ones(3, "float32"))]
    second = [tf.Variable(np.zeros(3, "float32")), tf.Variable(np.ones(3, "float32"))]
    handle = lists.get(first)
    assert lists.get(first) is handle  # made once
    lists._lists[tuple(id(v) for v in second)] = lists._lists.pop(tuple(id(v) for v in first))
    assert lists.get(second) is not handle
