"""fusedopt.training distillation helpers: the loss is Hinton et al.'s formula, online and offline."""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

import fusedopt.keras as fk  # noqa: E402
import fusedopt.training as ft  # noqa: E402
from fusedopt.training import distillation as dist_module  # noqa: E402

TEACHER = np.array([[2.0, -1.0, 0.5, 0.0], [0.1, 0.2, -3.0, 1.5], [5.0, 4.0, -2.0, 0.3]], np.float32)
STUDENT = np.array([[0.5, 1.0, -0.5, 0.2], [1.0, -1.0, 0.0, 0.7], [-1.0, 2.0, 0.5, 0.0]], np.float32)


def log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def hinton(t: np.ndarray, s: np.ndarray, T: float, w: np.ndarray | None = None) -> float:
    """T^2 * mean_b KL(softmax(t/T) || softmax(s/T)), in float64."""
    t, s = t.astype(np.float64), s.astype(np.float64)
    log_p, log_q = log_softmax(t / T), log_softmax(s / T)
    kl = (np.exp(log_p) * (log_p - log_q)).sum(axis=-1)
    if w is not None:
        kl = kl * w
    return T * T * kl.mean()


def sparse_ce(y: np.ndarray, s: np.ndarray) -> float:
    return float(-log_softmax(s.astype(np.float64))[np.arange(len(y)), y].mean())


def mlp(hidden: int, seed: int, name: str, **dense_kwargs) -> keras.Model:
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((6,)), keras.layers.Dense(hidden, activation="relu", **dense_kwargs),
                             keras.layers.Dense(4)], name=name)


def data(n: int = 96, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 6)).astype(np.float32)
    y = (np.argmax(x[:, :4], axis=1)).astype(np.int32)
    return x, y


@pytest.mark.parametrize("T", [1.0, 2.0, 4.0, 10.0])
def test_distillation_loss_equals_the_formula_on_fixed_logits(T):
    want = hinton(TEACHER, STUDENT, T)
    np.testing.assert_allclose(float(ft.distillation_kl(TEACHER, STUDENT, T)), want, rtol=1e-5)
    np.testing.assert_allclose(float(ft.TemperatureKLDistillation(T).compute_loss(TEACHER, STUDENT)), want,
                               rtol=1e-5)


def test_distillation_loss_with_sample_weight_and_structures():
    w = np.array([1.0, 0.0, 2.0], np.float32)
    np.testing.assert_allclose(float(ft.distillation_kl(TEACHER, STUDENT, 3.0, sample_weight=w)),
                               hinton(TEACHER, STUDENT, 3.0, w), rtol=1e-5)
    both = ft.TemperatureKLDistillation(3.0).compute_loss([TEACHER, STUDENT], [STUDENT, TEACHER])
    np.testing.assert_allclose(float(both), hinton(TEACHER, STUDENT, 3.0) + hinton(STUDENT, TEACHER, 3.0),
                               rtol=1e-5)
    assert float(ft.distillation_kl(TEACHER, TEACHER, 2.0)) == pytest.approx(0.0, abs=1e-6)


def test_distillation_gradient_is_T_times_q_minus_p():
    """Hinton et al. eq. 2 with the T^2 factor: dL/ds = T * (q - p) / B; no gradient into the teacher."""
    T = 4.0
    s = tf.Variable(STUDENT)
    t = tf.Variable(TEACHER)
    with tf.GradientTape(persistent=True) as tape:
        loss = ft.distillation_kl(t, s, T)
    p = np.exp(log_softmax(TEACHER / T))
    q = np.exp(log_softmax(STUDENT / T))
    np.testing.assert_allclose(tape.gradient(loss, s).numpy(), T * (q - p) / len(p), atol=1e-6)
    assert tape.gradient(loss, t) is None


def test_temperature_kl_validates_and_round_trips():
    with pytest.raises(ValueError, match="temperature"):
        ft.TemperatureKLDistillation(0.0)
    with pytest.raises(TypeError, match="temperature"):
        ft.TemperatureKLDistillation("4")
    loss = ft.TemperatureKLDistillation(2.5)
    again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss))
    assert isinstance(again, ft.TemperatureKLDistillation) and again.temperature == 2.5


def test_keras_string_kl_default_bug_is_detected_and_refused():
    """Regression: keras.distillation.LogitsDistillation(loss="kl_divergence"), the default.

    In Keras 3.15 the string resolves to the function keras.losses.kl_divergence;
    LogitsDistillation.compute_loss applies softmax and T^2 only when
    isinstance(loss_fn, keras.losses.KLDivergence), so the default takes KL on
    logits/T (clipped to [1e-7, 1] as if they were probabilities). A test on
    the Distiller's API alone would not notice: training runs, the number is
    just not the formula.
    """
    T = 2.0
    default = keras.distillation.LogitsDistillation(temperature=T)
    got = float(default.compute_loss(TEACHER, STUDENT))
    broken = not np.isclose(got, hinton(TEACHER, STUDENT, T), rtol=1e-4)
    assert dist_module._keras_string_kl_is_wrong() == broken
    if keras.__version__.startswith("3.15."):
        assert broken  # verified on the installed version; the guard must be active
    if broken:
        with pytest.raises(ValueError, match="kl_divergence"):
            ft.check_distillation_losses(default)
        with pytest.raises(ValueError, match="kl_divergence"):
            ft.Distiller(mlp(8, 0, "t"), mlp(4, 1, "s"), keras.distillation.LogitsDistillation(loss="kld"))
    # The loss-object form takes the softmax/T^2 branch (probabilities clipped at 1e-7).
    with_object = keras.distillation.LogitsDistillation(temperature=T, loss=keras.losses.KLDivergence())
    ft.check_distillation_losses(with_object)
    np.testing.assert_allclose(float(with_object.compute_loss(TEACHER, STUDENT)), hinton(TEACHER, STUDENT, T),
                               rtol=1e-4)
    with pytest.raises(TypeError, match="distillation_losses\\[0\\]"):
        ft.check_distillation_losses("kl_divergence")


def test_distiller_loss_is_alpha_mix_plus_student_regularization():
    """The online total is alpha*CE + (1-alpha)*T^2*KL + student.losses.

    Regression for Keras 3.15's Distiller.compute_loss, which drops the
    student's regularization losses (kernel_regularizer, add_loss).
    """
    x, y = data(16)
    teacher = mlp(16, 0, "teacher")
    student = mlp(8, 1, "student", kernel_regularizer=keras.regularizers.L2(0.05))
    alpha, T = 0.3, 3.0
    distiller = ft.build_distiller(teacher, student, temperature=T, alpha=alpha, optimizer=fk.Adam(1e-3))
    s = student(x).numpy()
    t = teacher(x).numpy()
    reg = 0.05 * float(np.sum(np.square(student.layers[0].kernel.numpy())))
    want = alpha * sparse_ce(y, s) + (1 - alpha) * hinton(t, s, T) + reg
    got = float(distiller.compute_loss(x, y, student(x)))
    np.testing.assert_allclose(got, want, rtol=1e-5)
    keras_total = float(keras.distillation.Distiller.compute_loss(distiller, x, y, student(x)))
    np.testing.assert_allclose(keras_total, want - reg, rtol=1e-5)  # what Keras alone returns


def test_online_distillation_trains_the_student_only_and_the_loss_falls():
    x, y = data()
    teacher = mlp(32, 0, "teacher")
    teacher.compile(optimizer=fk.Adam(1e-2), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    teacher.fit(x, y, epochs=5, batch_size=32, verbose=0)
    teacher_before = [w.copy() for w in teacher.get_weights()]
    student = mlp(8, 1, "student")
    student_before = [w.copy() for w in student.get_weights()]
    distiller = ft.build_distiller(teacher, student, temperature=4.0, alpha=0.1, optimizer=fk.Adam(1e-2),
                                   metrics=["accuracy"])
    history = distiller.fit(x, y, epochs=6, batch_size=32, verbose=0).history
    assert history["loss"][-1] < 0.7 * history["loss"][0]
    assert history["distillation_loss"][-1] < history["distillation_loss"][0]
    for a, b in zip(teacher_before, teacher.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert all(not np.array_equal(a, b) for a, b in zip(student_before, student.get_weights()))
    with pytest.raises(ValueError, match="alpha"):
        ft.build_distiller(teacher, student, alpha=1.5)
    with pytest.raises(ValueError, match="optimizer"):
        ft.build_distiller(teacher, student, steps_per_execution=2)


def test_cache_teacher_logits_and_dataset(tmp_path):
    x, y = data(50)
    teacher = mlp(16, 0, "teacher")
    path = tmp_path / "logits.npy"
    cached = ft.cache_teacher_logits(teacher, x, path=path, batch_size=16)
    assert path.exists() and cached.dtype == np.float32 and cached.shape == (50, 4)
    np.testing.assert_allclose(np.load(path), teacher.predict(x, verbose=0), rtol=1e-6)
    in_memory = ft.cache_teacher_logits(teacher, x)
    np.testing.assert_allclose(in_memory, cached, rtol=1e-6)

    ds = ft.DistillationDataset(x, y, cached, batch_size=16, seed=0)
    assert len(ds) == 4
    seen = []
    for i in range(len(ds)):
        xb, (yb, tb) = ds[i]
        assert xb.shape[0] == yb.shape[0] == tb.shape[0] <= 16
        rows = [int(np.flatnonzero((x == r).all(axis=1))[0]) for r in xb]
        np.testing.assert_array_equal(yb, y[rows])
        np.testing.assert_array_equal(tb, cached[rows])
        seen += rows
    assert sorted(seen) == list(range(50))  # each row once per epoch
    first = ds[0][0].copy()
    ds.on_epoch_end()
    assert not np.array_equal(first, ds[0][0])  # reshuffled
    with pytest.raises(ValueError, match="same length"):
        ft.DistillationDataset(x, y[:-1], cached)


def test_offline_loss_equals_the_online_loss_on_the_same_batch():
    x, y = data(16)
    teacher = mlp(16, 0, "teacher")
    student = mlp(8, 1, "student", kernel_regularizer=keras.regularizers.L2(0.01))
    online = ft.build_distiller(teacher, student, temperature=2.0, alpha=0.25, optimizer=fk.SGD(0.1))
    offline = ft.OfflineDistiller(student, temperature=2.0, alpha=0.25)
    logits = teacher.predict(x, verbose=0)
    got = float(offline.compute_loss(x, (y, logits), student(x)))
    np.testing.assert_allclose(got, float(online.compute_loss(x, y, student(x))), rtol=1e-5)
    # Plain labels (e.g. evaluate): the hard-label term plus regularization only.
    reg = 0.01 * float(np.sum(np.square(student.layers[0].kernel.numpy())))
    np.testing.assert_allclose(float(offline.compute_loss(x, y, student(x))), sparse_ce(y, student(x).numpy()) + reg,
                               rtol=1e-5)


def test_offline_distillation_trains_from_the_cache_and_saves_the_student_alone(tmp_path):
    x, y = data()
    teacher = mlp(32, 0, "teacher")
    teacher.compile(optimizer=fk.Adam(1e-2), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    teacher.fit(x, y, epochs=5, batch_size=32, verbose=0)
    logits = ft.cache_teacher_logits(teacher, x, path=tmp_path / "t.npy")
    student = mlp(8, 1, "student")
    offline = ft.OfflineDistiller(student, temperature=4.0, alpha=0.1)
    offline.compile(optimizer=fk.Adam(1e-2), metrics=["accuracy"])
    history = offline.fit(ft.DistillationDataset(x, y, logits, 32, seed=1), epochs=6, verbose=0).history
    assert history["loss"][-1] < 0.7 * history["loss"][0]
    assert "accuracy" in history and "distillation_loss" in history
    offline.evaluate(x, y, verbose=0)  # plain labels work too
    path = tmp_path / "student.keras"
    offline.student.save(path)
    reloaded = keras.saving.load_model(path)
    assert reloaded.name == "student" and len(reloaded.weights) == len(student.weights)
    np.testing.assert_allclose(reloaded.predict(x, verbose=0), student.predict(x, verbose=0), rtol=1e-6)
