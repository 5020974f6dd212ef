"""Shared pieces of the Keras drop-in tests (tests/test_keras_*.py).

One small seeded model with a rank-3 Conv1D kernel (Adafactor's factored
case), 1-D biases and 2-D Dense kernels; one data set; one training routine;
one comparison of model weights *and* optimizer variables (same count, order,
names, shapes and values); one float32 tolerance; a probe that tells whether
the fused op was traced into a step; a subprocess runner.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, Callable, Iterator

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import fusedopt.keras as fk  # noqa: E402
from fusedopt.keras import _xla_library  # noqa: E402
from fusedopt.keras import optimizers as fk_optimizers  # noqa: E402

REPO = Path(__file__).resolve().parent.parent

# float32: a few ulps per step, compounded over a handful of steps; atol for
# values that pass near 0. One systematic difference rides on top for the
# Adam family (Adam, AdamW, Lamb, Adamax, Muon's Adam part): Keras computes the
# bias correction 1 - beta_2^t in float32 from float32(beta_2), the engine in
# double, so every step is ~6e-6 relative larger/smaller (beta_2 = 0.999).
# Over 6 steps that is ~4e-5 * lr absolute, within atol for lr <= 0.02, which
# is why the Adam-family tests use learning rates of 0.01-0.02 (see
# test_keras_numerics.py::test_adam_difference_is_kerass_float32_bias_correction).
RTOL, ATOL = 1e-5, 1e-6
# (atol, rtol) for the low-precision variable dtypes (built-ins compute in the
# variable dtype, see test_keras_features.py).
LOW_PRECISION_TOL = {"float16": (2e-3, 2e-3), "bfloat16": (2e-2, 2e-2)}

BATCH = 8
STEPS = 6
N_SAMPLES = BATCH * STEPS

# (id, class name, kwargs): every optimizer keras.optimizers exports, every variant.
OPTIMIZER_CASES = [
    ("sgd", "SGD", {"learning_rate": 0.05}),
    ("sgd_momentum", "SGD", {"learning_rate": 0.05, "momentum": 0.9}),
    ("sgd_nesterov", "SGD", {"learning_rate": 0.05, "momentum": 0.9, "nesterov": True}),
    ("rmsprop", "RMSprop", {"learning_rate": 0.01}),
    ("rmsprop_centered", "RMSprop", {"learning_rate": 0.01, "centered": True}),
    ("rmsprop_momentum", "RMSprop", {"learning_rate": 0.01, "momentum": 0.8}),
    ("rmsprop_centered_momentum", "RMSprop", {"learning_rate": 0.01, "centered": True, "momentum": 0.5}),
    ("adagrad", "Adagrad", {"learning_rate": 0.05}),
    ("adadelta", "Adadelta", {"learning_rate": 1.0}),
    ("adam", "Adam", {"learning_rate": 0.01}),
    ("adam_amsgrad", "Adam", {"learning_rate": 0.01, "amsgrad": True}),
    ("adamw", "AdamW", {"learning_rate": 0.01, "weight_decay": 0.05}),
    ("adamax", "Adamax", {"learning_rate": 0.01}),
    ("nadam", "Nadam", {"learning_rate": 0.01}),
    ("ftrl", "Ftrl", {"learning_rate": 0.05, "l1_regularization_strength": 0.001,
                      "l2_regularization_strength": 0.01, "l2_shrinkage_regularization_strength": 0.01,
                      "beta": 0.1}),
    ("lion", "Lion", {"learning_rate": 0.003}),
    ("lamb", "Lamb", {"learning_rate": 0.01}),
    ("adafactor", "Adafactor", {"learning_rate": 0.05}),
    ("muon", "Muon", {"learning_rate": 0.01, "exclude_layers": ["out"]}),
    ("schedule_free_adamw", "ScheduleFreeAdamW", {"learning_rate": 0.01, "warmup_steps": 3,
                                                  "weight_decay": 0.1}),
]
CASE_IDS = [c[0] for c in OPTIMIZER_CASES]
CASES = {c[0]: c for c in OPTIMIZER_CASES}


def optimizer_pair(name: str, **kwargs) -> tuple[Any, Any]:
    """(built-in, fusedopt) instances of keras.optimizers.<name> with kwargs."""
    return getattr(keras.optimizers, name)(**kwargs), getattr(fk, name)(**kwargs)


def data(seed: int = 0, n: int = N_SAMPLES) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6, 3)).astype("float32")
    y = rng.normal(size=(n, 2)).astype("float32")
    return x, y


def make_model(seed: int = 0, dtype: Any = None, kernel_constraint: Any = None,
               bias_constraint: Any = None) -> keras.Model:
    """Conv1D kernel (3, 3, 4) rank 3 + bias (4,); Dense (16, 5) + (5,); Dense (5, 2) + (2,)."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((6, 3))
    x = keras.layers.Conv1D(4, 3, name="conv", dtype=dtype)(inputs)
    x = keras.layers.Flatten(dtype=dtype)(x)
    x = keras.layers.Dense(5, activation="tanh", name="hidden", dtype=dtype,
                           kernel_constraint=kernel_constraint, bias_constraint=bias_constraint)(x)
    out = keras.layers.Dense(2, name="out", dtype=dtype)(x)
    if dtype is not None or keras.config.dtype_policy().name.startswith("mixed"):
        out = keras.layers.Activation("linear", dtype="float32")(out)
    return keras.Model(inputs, out)


def fit(optimizer: Any, model: keras.Model | None = None, x=None, y=None, epochs: int = 1,
        batch_size: int = BATCH, callbacks=None, **compile_kwargs) -> keras.Model:
    """model.compile(optimizer, "mse", jit_compile=False) then fit, no shuffling."""
    if model is None:
        model = make_model()
    if x is None:
        x, y = data()
    compile_kwargs.setdefault("jit_compile", False)
    model.compile(optimizer=optimizer, loss="mse", **compile_kwargs)
    model.fit(x, y, batch_size=batch_size, epochs=epochs, shuffle=False, verbose=0,
              callbacks=callbacks)
    return model


def _state_name(name: str) -> str:
    # Unnamed keras.Variables (Nadam's u_product) get a process-wide unique
    # name: "variable", "variable_1", ... whichever optimizer comes first.
    return re.sub(r"^variable(_\d+)?$", "variable", name)


def optimizer_state(optimizer: Any) -> list[tuple[str, tuple, np.ndarray]]:
    return [(_state_name(v.name), tuple(v.shape), np.asarray(keras.ops.convert_to_numpy(v.value)))
            for v in optimizer.variables]


def assert_close(actual, desired, atol=ATOL, rtol=RTOL, what="", scaled_atol=False):
    """np.testing.assert_allclose in float64.

    scaled_atol: atol is relative to the tensor's scale (max |desired|), for
    tight checks of slots whose values are all tiny (Adam's velocity is ~1e-5
    here: a plain atol of 1e-6 would accept any error in it).
    """
    actual = np.asarray(actual).astype("float64")
    desired = np.asarray(desired).astype("float64")
    assert actual.shape == desired.shape, (what, actual.shape, desired.shape)
    if scaled_atol:
        atol = atol * (float(np.max(np.abs(desired))) if desired.size else 0.0)
    np.testing.assert_allclose(actual, desired, rtol=rtol, atol=atol, err_msg=what)


def assert_same_training(model_a, opt_a, model_b, opt_b, atol=ATOL, rtol=RTOL,
                         scaled_atol=False) -> None:
    """Model weights and optimizer.variables (count, order, names, shapes, values) agree.

    `model_b`/`opt_b` are compared against `model_a`/`opt_a` (the reference).
    """
    wa, wb = model_a.get_weights(), model_b.get_weights()
    assert len(wa) == len(wb)
    for i, (a, b) in enumerate(zip(wa, wb)):
        assert_close(b, a, atol, rtol, f"model weight {i} {model_a.weights[i].path}", scaled_atol)
    sa, sb = optimizer_state(opt_a), optimizer_state(opt_b)
    assert [(n, s) for n, s, _ in sa] == [(n, s) for n, s, _ in sb], "optimizer.variables differ"
    for i, ((name, _, a), (_, _, b)) in enumerate(zip(sa, sb)):
        assert_close(b, a, atol, rtol, f"optimizer variable {i} ({name})", scaled_atol)


@contextlib.contextmanager
def fused_op_probe() -> Iterator[list]:
    """Records every fused op placed into a graph (at trace time) while active: the
    TensorFlow op (by rule) and, on the JAX backend, the XLA custom call."""
    calls: list = []
    original_op, original_call = fk_optimizers._op_function, _xla_library.fused_update

    def probe_op(rule):
        calls.append(rule)
        return original_op(rule)

    def probe_call(rule, *args, **kwargs):
        calls.append(rule)
        return original_call(rule, *args, **kwargs)

    fk_optimizers._op_function, _xla_library.fused_update = probe_op, probe_call
    try:
        yield calls
    finally:
        fk_optimizers._op_function, _xla_library.fused_update = original_op, original_call


def compare_fit(name: str, kwargs: dict, *, expect_fused: bool | None = True,
                model_fn: Callable[[], keras.Model] = make_model,
                configure: Callable[[Any, keras.Model], None] | None = None,
                wrap: Callable[[Any], Any] | None = None, fit_kwargs: dict | None = None,
                atol: float = ATOL, rtol: float = RTOL, scaled_atol: bool = False):
    """Train the same model with keras.optimizers.<name> and fusedopt's; compare everything.

    `configure(optimizer, model)` runs before compile (e.g. exclude_from_weight_decay);
    `wrap(optimizer)` wraps it (LossScaleOptimizer, MultiOptimizer);
    `expect_fused`: True/False asserts whether the fused op was traced, None skips it.
    Returns (built-in model, built-in optimizer, our model, our optimizer, fused-op calls).
    """
    runs = []
    for optimizer in optimizer_pair(name, **kwargs):
        model = model_fn()
        if configure is not None:
            configure(optimizer, model)
        compiled = wrap(optimizer) if wrap is not None else optimizer
        with fused_op_probe() as calls:
            fit(compiled, model, **(fit_kwargs or {}))
        runs.append((model, model.optimizer, calls))
    (model_a, opt_a, _), (model_b, opt_b, calls) = runs
    if expect_fused is True:
        assert calls, "the fused op was never traced into the train step"
    elif expect_fused is False:
        assert not calls, f"the fused op ran where Keras's update was expected: {calls}"
    assert_same_training(model_a, opt_a, model_b, opt_b, atol, rtol, scaled_atol)
    return model_a, opt_a, model_b, opt_b, calls


def run_python(code: str, env: dict | None = None, timeout: float = 240, cwd=None) -> subprocess.CompletedProcess:
    """Run `python -c code` in a fresh process; raise with its output if it fails."""
    full_env = dict(os.environ)
    full_env.setdefault("KERAS_BACKEND", "tensorflow")
    full_env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    full_env.update(env or {})
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=full_env,
                          capture_output=True, text=True, timeout=timeout, cwd=cwd)
    if proc.returncode != 0:
        raise AssertionError(f"subprocess failed (rc={proc.returncode}):\n{proc.stdout[-4000:]}\n"
                             f"{proc.stderr[-6000:]}")
    return proc


# Keras's features around the update, each with one optimizer, for the tests
# under XLA and on JAX (test_keras_xla.py, tests/jax): (id, class name, kwargs).
FEATURE_CASES = [
    ("ema", "Adam", {"learning_rate": 0.01, "use_ema": True, "ema_momentum": 0.9,
                     "ema_overwrite_frequency": 3}),
    ("accumulation", "Adam", {"learning_rate": 0.01, "gradient_accumulation_steps": 2}),
    ("accumulation_rmsprop", "RMSprop", {"learning_rate": 0.01, "gradient_accumulation_steps": 3}),
    ("weight_decay", "SGD", {"learning_rate": 0.05, "momentum": 0.9, "weight_decay": 0.1}),
    ("schedule", "Adam", {"learning_rate": keras.optimizers.schedules.ExponentialDecay(0.02, 2, 0.5)}),
    ("clipnorm", "Adagrad", {"learning_rate": 0.05, "clipnorm": 0.1}),
    ("global_clipnorm", "Lion", {"learning_rate": 0.003, "global_clipnorm": 0.1}),
    ("clipvalue", "Nadam", {"learning_rate": 0.01, "clipvalue": 0.01}),
]


def assert_one_step_tight(name: str, kwargs: dict, jit_compile: bool = True) -> None:
    """One model.fit step of keras.optimizers.<name> and fusedopt's from the same state:
    every optimizer variable to 1e-6 relative (atol scaled to the tensor's magnitude)
    and every weight update (new - old) to 1e-5 relative (Keras's Adam family computes
    1 - beta_2^t from a float32 beta_2, ~6e-6 relative off the engine's double)."""
    x, y = data(n=BATCH)
    initial = make_model().get_weights()
    runs = []
    for module in (keras.optimizers, fk):
        optimizer = getattr(module, name)(**kwargs)
        with fused_op_probe() as calls:
            model = fit(optimizer, make_model(), x, y, jit_compile=jit_compile)
        runs.append((model.get_weights(), optimizer_state(optimizer), calls))
    (wa, sa, _), (wb, sb, calls) = runs
    assert calls, "the fused update was never traced into the train step"
    for i, (w0, a, b) in enumerate(zip(initial, wa, wb)):
        assert_close(b - w0, a - w0, 1e-5, 1e-5, f"update of weight {i}", scaled_atol=True)
    for i, ((n, _, a), (_, _, b)) in enumerate(zip(sa, sb)):
        assert_close(b, a, 1e-6, 1e-6, f"optimizer variable {i} ({n})", scaled_atol=True)


def compare_with_fallback(name: str, kwargs: dict, library: Any, jit_compile: bool) -> None:
    """fusedopt.keras.<name> with its fused update against the same class with
    `library.usable` off (Keras's update with fusedopt's extras around it): for what
    the built-in lacks (l1/l2/proximal_l1, rules Keras does not ship)."""
    import pytest

    runs = []
    for fused in (False, True):
        optimizer = getattr(fk, name)(**kwargs)
        with pytest.MonkeyPatch.context() as m:
            if not fused:
                m.setattr(library, "usable", lambda: False)
            with fused_op_probe() as calls:
                model = fit(optimizer, make_model(), jit_compile=jit_compile)
        assert bool(calls) == fused
        runs.append((model, optimizer))
    assert_same_training(*runs[0], *runs[1])


def assert_save_load_continues_bitwise(tmp_path: Path, backend: str, jit_compile: bool) -> None:
    """fusedopt.keras.Adam (with weight decay) trains 3 steps and saves a .keras file;
    3 more steps there, and 3 more from the file loaded in a fresh process, must give
    bitwise the same weights and optimizer variables."""
    code = f"""
    import sys
    import numpy as np, keras
    sys.path.insert(0, {str(Path(__file__).resolve().parent)!r})
    import fusedopt.keras as fk
    from keras_helpers import data, make_model
    x, y = data()
    path = {str(tmp_path / "model.keras")!r}
    if sys.argv[1] == "first":
        model = make_model()
        model.compile(optimizer=fk.Adam(learning_rate=0.01, weight_decay=0.01), loss="mse",
                      jit_compile={jit_compile!r})
        model.fit(x[:24], y[:24], batch_size=8, shuffle=False, verbose=0)
        model.save(path)
    else:
        model = keras.saving.load_model(path)
    assert type(model.optimizer) is fk.Adam
    model.fit(x[24:], y[24:], batch_size=8, shuffle=False, verbose=0)
    np.savez({str(tmp_path)!r} + "/" + sys.argv[1] + ".npz",
             *[w.numpy() for w in model.weights], *[np.asarray(v.numpy()) for v in model.optimizer.variables])
    """
    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent(code))
    for which in ("first", "second"):
        run_python(f"import sys, runpy; sys.argv = ['run', {which!r}]; runpy.run_path({str(script)!r})",
                   env={"KERAS_BACKEND": backend})
    first, second = np.load(tmp_path / "first.npz"), np.load(tmp_path / "second.npz")
    assert len(first.files) == len(second.files)
    for key in first.files:
        np.testing.assert_array_equal(second[key], first[key], err_msg=key)
