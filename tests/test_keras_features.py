"""fusedopt.keras drop-ins with Keras optimizer features switched on.

Each test trains the same seeded model with the built-in and with fusedopt's
optimizer (model.fit, 6 steps) and compares model weights and every optimizer
variable. Where the fused op runs (float32 variables, dense gradients) the
comparison is to float32 precision; where fusedopt must fall back to Keras's
own update (float16/bfloat16 variables) the results are bitwise identical.
"""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

import fusedopt.keras as fk
from keras_helpers import (
    BATCH,
    CASE_IDS,
    CASES,
    assert_close,
    assert_same_training,
    compare_fit,
    data,
    fit,
    fused_op_probe,
    make_model,
    optimizer_pair,
    optimizer_state,
)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

schedules = keras.optimizers.schedules


# -- learning-rate schedules and callables ------------------------------------------
SCHEDULE_CASES = {
    "adam-exponential": ("Adam", lambda: schedules.ExponentialDecay(0.02, decay_steps=2, decay_rate=0.5)),
    "adam-piecewise": ("Adam", lambda: schedules.PiecewiseConstantDecay([2, 4], [0.02, 0.01, 0.005])),
    "adam-cosine-warmup": ("Adam", lambda: schedules.CosineDecay(0.0, 6, warmup_target=0.02, warmup_steps=2)),
    "adamw-inverse-time": ("AdamW", lambda: schedules.InverseTimeDecay(0.02, 1, 0.5)),
    "sgd-momentum-polynomial": ("SGD", lambda: schedules.PolynomialDecay(0.05, 6, 0.005, power=2.0)),
    "lamb-cosine-restarts": ("Lamb", lambda: schedules.CosineDecayRestarts(0.02, 2)),
    "muon-exponential": ("Muon", lambda: schedules.ExponentialDecay(0.01, 1, 0.8)),
}
EXTRA_KWARGS = {"AdamW": {"weight_decay": 0.05}, "SGD": {"momentum": 0.9},
                "Muon": {"exclude_layers": ["out"]}}


@pytest.mark.parametrize("case", sorted(SCHEDULE_CASES))
def test_learning_rate_schedule(case):
    name, make_schedule = SCHEDULE_CASES[case]
    # One schedule instance per optimizer (they are stateless, but keep them apart).
    built_in = getattr(keras.optimizers, name)(learning_rate=make_schedule(), **EXTRA_KWARGS.get(name, {}))
    ours = getattr(fk, name)(learning_rate=make_schedule(), **EXTRA_KWARGS.get(name, {}))
    model_a = fit(built_in)
    with fused_op_probe() as calls:
        model_b = fit(ours)
    assert calls
    assert_same_training(model_a, built_in, model_b, ours)


@pytest.mark.parametrize("name", ["Adam", "AdamW"])
def test_learning_rate_callable(name):
    """A callable of no arguments, read every step (here it reads `iterations`)."""
    def make(cls):
        holder = {}

        def lr():
            return 0.02 * keras.ops.power(0.7, keras.ops.cast(holder["opt"].iterations, "float32"))

        holder["opt"] = cls(learning_rate=lr, **({"weight_decay": 0.1} if name == "AdamW" else {}))
        return holder["opt"]

    built_in, ours = make(getattr(keras.optimizers, name)), make(getattr(fk, name))
    model_a = fit(built_in)
    with fused_op_probe() as calls:
        model_b = fit(ours)
    assert calls
    assert_same_training(model_a, built_in, model_b, ours)


# -- gradient clipping ---------------------------------------------------------------
@pytest.mark.parametrize("name,kwargs", [
    ("Adam", {"clipnorm": 0.05}),
    ("Adam", {"clipvalue": 0.01}),
    ("Adam", {"global_clipnorm": 0.05}),
    ("Lion", {"clipnorm": 0.05}),
], ids=lambda v: v if isinstance(v, str) else "-".join(v))
def test_gradient_clipping(name, kwargs):
    compare_fit(name, {"learning_rate": 0.01, **kwargs})


# -- weight decay and exclude_from_weight_decay -------------------------------------
WD_CASES = [("SGD", {"momentum": 0.9}, "none"), ("Lion", {}, "none"), ("Adafactor", {}, "none"),
            ("Lamb", {}, "none"), ("Muon", {"exclude_layers": ["out"]}, "none"),
            ("AdamW", {}, "var_names"), ("Muon", {"exclude_layers": ["out"]}, "var_names"),
            ("AdamW", {}, "var_list"), ("SGD", {}, "var_list")]


@pytest.mark.parametrize("name,kwargs,exclude", WD_CASES, ids=[f"{c[0]}-{c[2]}" for c in WD_CASES])
def test_weight_decay(name, kwargs, exclude):
    """Decay deferred into the fused op; exclude_from_weight_decay by name and by variable."""
    def configure(optimizer, model):
        if exclude == "var_names":
            optimizer.exclude_from_weight_decay(var_names=["bias"])
        elif exclude == "var_list":
            optimizer.exclude_from_weight_decay(var_list=[model.get_layer("hidden").kernel,
                                                          model.get_layer("conv").bias])

    compare_fit(name, {"learning_rate": 0.01, "weight_decay": 0.2, **kwargs}, configure=configure)


def test_weight_decay_exclusion_takes_effect():
    """Excluded variables (Keras matches var_names against variable.name, e.g.
    "bias", not the path) get exactly the update without decay; one step, so
    that the other variables' decay cannot reach them through the gradients.
    (Biases start at 0, where decay is a no-op: the kernels show decay is on.)"""
    x, y = data(n=BATCH)
    results = {}
    for wd, exclude in ((None, False), (0.5, True), (0.5, False)):
        model = make_model()
        opt = fk.SGD(learning_rate=0.1, weight_decay=wd)
        if exclude:
            opt.exclude_from_weight_decay(var_names=["bias"])
        fit(opt, model, x, y)
        results[(wd, exclude)] = {v.path: v.numpy() for v in model.trainable_variables}
    for path, value in results[(0.5, True)].items():
        if path.endswith("bias"):
            np.testing.assert_array_equal(value, results[(None, False)][path])
        else:
            assert not np.allclose(value, results[(None, False)][path]), path


# -- EMA ------------------------------------------------------------------------------
@pytest.mark.parametrize("name,kwargs", [
    ("Adam", {"use_ema": True}),
    ("Adam", {"use_ema": True, "ema_momentum": 0.5, "ema_overwrite_frequency": 2}),
    ("SGD", {"momentum": 0.9, "use_ema": True, "ema_momentum": 0.8, "ema_overwrite_frequency": 4}),
], ids=["adam-ema", "adam-ema-overwrite", "sgd-ema-overwrite"])
def test_ema(name, kwargs):
    _, opt_a, _, opt_b, _ = compare_fit(name, {"learning_rate": 0.01, **kwargs})
    # The EMA copies are optimizer variables (compared above); make sure they exist.
    assert any("average" in v.name for v in opt_b.variables)


# -- gradient accumulation -----------------------------------------------------------
@pytest.mark.parametrize("name,kwargs", [
    ("Adam", {"gradient_accumulation_steps": 2}),
    ("AdamW", {"weight_decay": 0.1, "gradient_accumulation_steps": 3, "clipnorm": 0.05}),
    ("Nadam", {"gradient_accumulation_steps": 2}),
], ids=["adam-2", "adamw-3-clipnorm", "nadam-2"])
def test_gradient_accumulation(name, kwargs):
    _, _, _, opt, _ = compare_fit(name, {"learning_rate": 0.01, **kwargs})
    assert int(opt.iterations.numpy()) == 6 // kwargs["gradient_accumulation_steps"]


# -- loss scaling ---------------------------------------------------------------------
@pytest.mark.parametrize("name", ["Adam", "Adafactor"])
def test_loss_scale_factor(name):
    compare_fit(name, {"learning_rate": 0.01, "loss_scale_factor": 256.0})


@pytest.fixture
def restore_policy():
    policy = keras.config.dtype_policy()
    yield
    keras.config.set_dtype_policy(policy)


# 16-bit compute: a one-ulp float32 difference in a weight can flip the 16-bit
# rounding of an activation (float16 ulp 2^-11, bfloat16 2^-8), so after the
# first step the two runs agree only to 16-bit precision.
MIXED_TOLERANCE = {"mixed_float16": (1e-4, 2e-3), "mixed_bfloat16": (1e-3, 1e-2)}


@pytest.mark.parametrize("policy,name", [("mixed_float16", "Adam"), ("mixed_float16", "AdamW"),
                                         ("mixed_bfloat16", "Adam"), ("mixed_bfloat16", "SGD")])
def test_loss_scale_optimizer_mixed_precision(policy, name, restore_policy):
    """Variables stay float32 (fused), compute is 16-bit, LossScaleOptimizer wraps.

    Step 1 starts from the same weights, so gradients are identical: float32
    tolerance. Steps 2-6: 16-bit tolerance (see MIXED_TOLERANCE)."""
    keras.config.set_dtype_policy(policy)
    kwargs = {"learning_rate": 0.01, **({"weight_decay": 0.1} if name == "AdamW" else {}),
              **({"momentum": 0.9} if name == "SGD" else {})}
    x, y = data()
    runs = []
    for opt in (getattr(keras.optimizers, name)(**kwargs), getattr(fk, name)(**kwargs)):
        lso = keras.optimizers.LossScaleOptimizer(opt, initial_scale=2.0**10)
        model = make_model()
        with fused_op_probe() as calls:
            fit(lso, model, x[:BATCH], y[:BATCH])
        runs.append([model, lso, calls])
    (model_a, opt_a, _), (model_b, opt_b, calls) = runs
    assert calls
    assert isinstance(opt_b.inner_optimizer, getattr(fk, name))
    assert all(str(v.dtype) == "float32" for v in model_b.trainable_variables)
    assert_same_training(model_a, opt_a, model_b, opt_b)
    for model, opt, _ in runs:
        fit(opt, model, x[BATCH:], y[BATCH:])
    atol, rtol = MIXED_TOLERANCE[policy]
    assert_same_training(model_a, opt_a, model_b, opt_b, atol, rtol)
    assert float(opt_b.dynamic_scale.numpy()) == float(opt_a.dynamic_scale.numpy())


def test_loss_scale_optimizer_skips_non_finite_step(restore_policy):
    """An inf gradient: the step is skipped and the scale halves, as with the built-in.

    Six steps of float16 compute: compared at 16-bit tolerance (MIXED_TOLERANCE).
    It was compared at float32 tolerance and passed by luck until a one-ulp
    float32 weight difference flipped a float16 rounding in step 6."""
    keras.config.set_dtype_policy("mixed_float16")
    x, y = data()
    y = y.copy()
    y[BATCH + 1, 0] = 1e6  # second batch: float16 overflow in the loss gradient
    runs = []
    for opt in (keras.optimizers.Adam(0.01), fk.Adam(0.01)):
        lso = keras.optimizers.LossScaleOptimizer(opt, initial_scale=2.0**15)
        model = fit(lso, make_model(), x, y)
        runs.append((model, lso))
    (model_a, lso_a), (model_b, lso_b) = runs
    assert float(lso_b.dynamic_scale.numpy()) < 2.0**15
    assert float(lso_a.dynamic_scale.numpy()) == float(lso_b.dynamic_scale.numpy())
    assert int(lso_a.inner_optimizer.iterations.numpy()) == int(lso_b.inner_optimizer.iterations.numpy())
    assert_same_training(model_a, lso_a, model_b, lso_b, *MIXED_TOLERANCE["mixed_float16"])


@pytest.mark.parametrize("dtype,name,kwargs", [
    ("float16", "Adam", {}), ("float16", "AdamW", {"weight_decay": 0.1}),
    ("bfloat16", "SGD", {"momentum": 0.9}), ("bfloat16", "Adafactor", {}),
], ids=["float16-Adam", "float16-AdamW", "bfloat16-SGD", "bfloat16-Adafactor"])
def test_low_precision_variables_fall_back_exactly(dtype, name, kwargs, restore_policy):
    """float16/bfloat16 variables run Keras's own update: bitwise identical."""
    keras.config.set_dtype_policy(dtype)
    _, _, model, _, _ = compare_fit(name, {"learning_rate": 0.01, **kwargs}, expect_fused=False,
                                    atol=0.0, rtol=0.0)
    assert all(str(v.dtype) == dtype for v in model.trainable_variables)


# -- sparse gradients (Embedding -> tf.IndexedSlices) ------------------------------------
def embedding_model(seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((3,), dtype="int32")
    x = keras.layers.Embedding(12, 4, name="embedding")(inputs)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(5, activation="tanh", name="hidden")(x)
    return keras.Model(inputs, keras.layers.Dense(2, name="out")(x))


def embedding_data(n=6 * BATCH):
    rng = np.random.default_rng(1)
    return rng.integers(0, 8, size=(n, 3)).astype("int32"), rng.normal(size=(n, 2)).astype("float32")


# Keras's sparse semantics (optimizer_sparse_test.py): these touch only the
# rows a sparse gradient names; Adam-type optimizers decay all rows.
ROW_SPARSE = {"SGD", "Adagrad", "Adadelta", "RMSprop"}


@pytest.mark.parametrize("name,kwargs", [
    ("SGD", {}), ("Adagrad", {}), ("Adadelta", {"learning_rate": 1.0}), ("RMSprop", {}), ("Adam", {}),
    ("AdamW", {"weight_decay": 0.1}), ("Adafactor", {}),
], ids=["SGD", "Adagrad", "Adadelta", "RMSprop", "Adam", "AdamW", "Adafactor"])
def test_sparse_embedding_gradients(name, kwargs):
    """Embedding gets IndexedSlices (Keras's update), Dense layers the fused op, in one step."""
    x, y = embedding_data()
    kwargs = {"learning_rate": 0.01, **kwargs}
    initial = embedding_model().get_layer("embedding").embeddings.numpy()
    model_a, _, model_b, _, calls = compare_fit(
        name, kwargs, model_fn=embedding_model, fit_kwargs={"x": x, "y": y})
    assert calls  # the Dense variables went to the fused op
    table = model_b.get_layer("embedding").embeddings.numpy()
    unused = slice(8, 12)  # rows no input names
    if name in ROW_SPARSE and "momentum" not in kwargs:
        np.testing.assert_array_equal(table[unused], initial[unused])


@pytest.mark.parametrize("name,kwargs", [("SGD", {}), ("Adagrad", {}), ("Adam", {}), ("RMSprop", {}),
                                         ("Adadelta", {}), ("Lion", {}), ("SGD", {"momentum": 0.5})],
                         ids=["SGD", "Adagrad", "Adam", "RMSprop", "Adadelta", "Lion", "SGD-momentum"])
def test_sparse_equals_densified(name, kwargs):
    """As keras/src/optimizers/optimizer_sparse_test.py: a sparse gradient gives the
    variable values of the same gradient densified (the dense one runs the fused op)."""
    opt_sparse, opt_dense = getattr(fk, name)(**kwargs), getattr(fk, name)(**kwargs)
    var_sparse = keras.Variable(np.ones((5, 3, 2), "float32"))
    var_dense = keras.Variable(np.ones((5, 3, 2), "float32"))
    with fused_op_probe() as calls:
        for i in range(5):
            grad = tf.IndexedSlices(tf.ones((3, 3, 2)) * (10.0 - i), tf.constant([0, 2, 4]),
                                    tf.constant([5, 3, 2]))
            opt_sparse.apply([grad], [var_sparse])
            opt_dense.apply([tf.convert_to_tensor(grad)], [var_dense])
    assert calls
    assert_close(var_sparse.numpy(), var_dense.numpy())


def test_loss_scale_factor_with_sparse_gradients_fails_like_builtin():
    """Known Keras limitation (not ours): loss_scale_factor with IndexedSlices."""
    x, y = embedding_data(BATCH)
    errors = []
    for cls in (keras.optimizers.Adam, fk.Adam):
        with pytest.raises(TypeError) as info:
            fit(cls(0.01, loss_scale_factor=8.0), embedding_model(), x, y)
        errors.append(type(info.value))
    assert errors[0] is errors[1]


# -- constraints -------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["Adam", "SGD"])
def test_variable_constraints(name):
    model_fn = lambda: make_model(kernel_constraint=keras.constraints.NonNeg(),  # noqa: E731
                                  bias_constraint=keras.constraints.MaxNorm(0.05, axis=0))
    _, _, model, _, _ = compare_fit(name, {"learning_rate": 0.01}, model_fn=model_fn)
    assert np.all(model.get_layer("hidden").kernel.numpy() >= 0)
    assert np.linalg.norm(model.get_layer("hidden").bias.numpy()) <= 0.05 + 1e-6


# -- MultiOptimizer ----------------------------------------------------------------------
def test_multi_optimizer():
    """keras.optimizers.MultiOptimizer: regex (re.fullmatch on variable.path) -> optimizer."""
    def make(mod):
        mapping = keras.optimizers.OptimizerMap(
            default_optimizer=mod.SGD(learning_rate=0.05, momentum=0.9),
            optimizer_map={"hidden/.*": mod.Adam(learning_rate=0.01),
                           "conv/kernel": mod.Adafactor(learning_rate=0.05)})
        return keras.optimizers.MultiOptimizer(mapping)

    built_in, ours = make(keras.optimizers), make(fk)
    model_a = fit(built_in)
    with fused_op_probe() as calls:
        model_b = fit(ours)
    assert set(calls) == {"sgd_momentum", "adam", "adafactor"}
    assert_same_training(model_a, built_in, model_b, ours)
    # Each variable went to the optimizer its path selects.
    by_path = {v.path: ours._inner_optimizers[ours._var_to_optimizer_idx[ours._var_key(v)]]
               for v in model_b.trainable_variables}
    assert isinstance(by_path["hidden/kernel"], fk.Adam)
    assert isinstance(by_path["conv/kernel"], fk.Adafactor)
    assert isinstance(by_path["conv/bias"], fk.SGD) and isinstance(by_path["out/bias"], fk.SGD)


# -- callbacks ----------------------------------------------------------------------------
def _fit_epochs(optimizer, callbacks, epochs=3, n=2 * BATCH):
    x, y = data(n=n)
    return fit(optimizer, make_model(), x, y, epochs=epochs, callbacks=callbacks)


def test_reduce_lr_on_plateau():
    runs = []
    for opt in (keras.optimizers.Adam(0.02), fk.Adam(0.02)):
        cb = keras.callbacks.ReduceLROnPlateau(monitor="loss", factor=0.5, patience=0, min_delta=1e9)
        runs.append((_fit_epochs(opt, [cb]), opt))
    (model_a, opt_a), (model_b, opt_b) = runs
    assert float(opt_b.learning_rate.numpy()) == float(opt_a.learning_rate.numpy()) < 0.02
    assert_same_training(model_a, opt_a, model_b, opt_b)


def test_learning_rate_scheduler():
    runs = []
    for opt in (keras.optimizers.SGD(0.05, momentum=0.9), fk.SGD(0.05, momentum=0.9)):
        cb = keras.callbacks.LearningRateScheduler(lambda epoch, lr: 0.05 * 0.5**epoch)
        runs.append((_fit_epochs(opt, [cb]), opt))
    (model_a, opt_a), (model_b, opt_b) = runs
    assert math.isclose(float(opt_b.learning_rate.numpy()), 0.05 * 0.25, rel_tol=1e-6)
    assert_same_training(model_a, opt_a, model_b, opt_b)


def test_model_checkpoint(tmp_path):
    """ModelCheckpoint writes the optimizer state; loading it gives the live state back."""
    opt = fk.Adam(0.01)
    path = tmp_path / "ckpt.keras"
    model = _fit_epochs(opt, [keras.callbacks.ModelCheckpoint(str(path), monitor="loss")])
    restored = keras.saving.load_model(path)
    assert type(restored.optimizer) is fk.Adam
    assert_same_training(model, opt, restored, restored.optimizer, atol=0.0, rtol=0.0)


# -- execution modes -------------------------------------------------------------------------
@pytest.mark.parametrize("name,kwargs", [("Adam", {}), ("AdamW", {"weight_decay": 0.1})])
def test_run_eagerly(name, kwargs):
    """run_eagerly=True: the fused op runs eagerly."""
    compare_fit(name, {"learning_rate": 0.01, **kwargs}, fit_kwargs={"run_eagerly": True})


@pytest.mark.parametrize("name,kwargs", [("Adam", {}), ("Adam", {"gradient_accumulation_steps": 2})],
                         ids=["Adam", "Adam-accumulation"])
def test_steps_per_execution(name, kwargs):
    compare_fit(name, {"learning_rate": 0.01, **kwargs}, fit_kwargs={"steps_per_execution": 3})


@pytest.mark.parametrize("case", CASE_IDS)
def test_apply_gradients_eager_and_in_tf_function(case):
    """Direct optimizer use outside model.fit: eager and inside a tf.function,
    the optimizer built by its first apply (in the trace: ScheduleFreeAdamW's
    build assigns a slot there, which the update must follow)."""
    _, name, kwargs = CASES[case]
    for in_function in (False, True):
        states = []
        for opt in optimizer_pair(name, **kwargs):
            variables = [keras.Variable(np.linspace(-1, 1, 12, dtype="float32").reshape(3, 4)),
                         keras.Variable(np.linspace(0, 1, 4, dtype="float32"))]

            def step(k):
                grads = [tf.sin(v.value * k) for v in variables]
                opt.apply_gradients(zip(grads, variables))

            step_fn = tf.function(step) if in_function else step
            with fused_op_probe() as calls:
                for k in range(5):
                    step_fn(tf.constant(k + 1.0))
            assert bool(calls) == isinstance(opt, fk.optimizers._Fused)
            states.append(([v.numpy() for v in variables], optimizer_state(opt)))
        (wa, sa), (wb, sb) = states
        for a, b in zip(wa, wb):
            assert_close(b, a)
        for (_, _, a), (_, _, b) in zip(sa, sb):
            assert_close(b, a)
