r"""Knowledge distillation on top of ``keras.distillation``.

The loss (Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural
Network", arXiv:1503.02531, 2015), for teacher logits ``t``, student logits
``s``, temperature ``T``, hard labels ``y`` and hard-label weight ``alpha``:

.. math::

    p = \mathrm{softmax}(t / T), \qquad q = \mathrm{softmax}(s / T)

    L_\mathrm{KD} = T^2 \cdot \frac{1}{B}\sum_{b=1}^{B} \mathrm{KL}(p_b \,\|\, q_b)
                  = T^2 \cdot \frac{1}{B}\sum_b \sum_k p_{bk} (\log p_{bk} - \log q_{bk})

    L = \alpha \cdot \mathrm{CE}(y, \mathrm{softmax}(s)) + (1 - \alpha) \cdot L_\mathrm{KD}

The ``T^2`` factor keeps the soft-target gradients on the scale of the
hard-label gradients when ``T`` changes (Hinton et al., section 2).
``alpha`` is what ``keras.distillation.Distiller`` calls
``student_loss_weight``.

Two ways to train:

* **online** (:func:`build_distiller`): the teacher runs on every batch, via
  ``keras.distillation.Distiller``;
* **offline** (:func:`cache_teacher_logits`, :class:`DistillationDataset`,
  :class:`OfflineDistiller`): the teacher runs once, its logits are cached (in
  memory or in a ``.npy`` file) and the student trains on
  ``(x, (y, teacher_logits))`` batches; the teacher is never re-run.

Two gaps in Keras 3.15's ``keras.distillation`` that this module closes:

1. ``LogitsDistillation(loss="kl_divergence")`` (the default) resolves the
   string to the *function* ``keras.losses.kl_divergence``; the branch that
   applies the softmax and the ``T^2`` factor checks
   ``isinstance(loss_fn, keras.losses.KLDivergence)`` and is skipped, so KL is
   taken on ``logits / T`` themselves (clipped to ``[1e-7, 1]`` as if they
   were probabilities), without ``T^2``
   (``keras/src/distillation/distillation_loss.py``, ``_convert_loss_to_function``
   and ``LogitsDistillation.compute_loss``). :class:`TemperatureKLDistillation`
   computes the formula above with ``log_softmax``; :class:`Distiller` refuses a
   ``LogitsDistillation`` that would hit the bug.
2. ``Distiller.compute_loss`` returns only the student and distillation terms:
   the student's regularization losses (``kernel_regularizer``, ``add_loss``,
   L2-SP from :func:`fusedopt.training.attach_l2sp`) are dropped.
   :class:`Distiller` adds them back.
"""

from __future__ import annotations

import functools
import math
import os
from typing import Any, Sequence

import keras
import numpy as np
from keras import ops

__all__ = [
    "distillation_kl",
    "TemperatureKLDistillation",
    "Distiller",
    "build_distiller",
    "check_distillation_losses",
    "cache_teacher_logits",
    "DistillationDataset",
    "OfflineDistiller",
]


def _check_temperature(temperature: Any) -> float:
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float, np.floating, np.integer)):
        raise TypeError(f"temperature must be a number, got {type(temperature).__name__}")
    t = float(temperature)
    if not math.isfinite(t) or t <= 0:
        raise ValueError(f"temperature must be finite and > 0, got {t}")
    return t


def _check_alpha(alpha: Any) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float, np.floating, np.integer)):
        raise TypeError(f"alpha must be a number, got {type(alpha).__name__}")
    a = float(alpha)
    if not 0.0 <= a <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {a}")
    return a


def distillation_kl(teacher_logits: Any, student_logits: Any, temperature: float,
                    sample_weight: Any = None) -> Any:
    r"""Hinton et al.'s soft-target loss on logits (no gradient into the teacher).

    .. math::

        T^2 \cdot \frac{1}{B}\sum_b w_b \sum_k p_{bk}(\log p_{bk} - \log q_{bk}),
        \quad p = \mathrm{softmax}(t/T),\ q = \mathrm{softmax}(s/T)

    computed with ``log_softmax`` (no clipping), over the last axis, averaged
    over every other axis (``w_b = 1`` without ``sample_weight``; with it,
    Keras's ``sum_over_batch_size`` convention ``sum(w * kl) / B``).
    Reference: Hinton, Vinyals & Dean, arXiv:1503.02531, 2015.
    """
    t = _check_temperature(temperature)
    student_logits = ops.convert_to_tensor(student_logits)
    dtype = keras.backend.standardize_dtype(student_logits.dtype)
    dtype = dtype if "float" in dtype else "float32"
    s = ops.cast(student_logits, dtype)
    teacher = ops.stop_gradient(ops.cast(ops.convert_to_tensor(teacher_logits), dtype))
    log_p = ops.log_softmax(teacher / t, axis=-1)
    log_q = ops.log_softmax(s / t, axis=-1)
    kl = ops.sum(ops.exp(log_p) * (log_p - log_q), axis=-1)
    if sample_weight is not None:
        w = ops.cast(ops.convert_to_tensor(sample_weight), dtype)
        while len(w.shape) < len(kl.shape):
            w = ops.expand_dims(w, -1)
        kl = kl * w
    return (t * t) * ops.mean(kl)


@keras.saving.register_keras_serializable(package="fusedopt")
class TemperatureKLDistillation(keras.distillation.DistillationLoss):
    r"""``keras.distillation`` loss: ``T^2 * KL(softmax(t/T) || softmax(s/T))``.

    A correct replacement for ``keras.distillation.LogitsDistillation`` with
    its default ``loss="kl_divergence"`` (see the module docstring for what
    that default computes in Keras 3.15). Works on a single output or any
    structure of outputs (the terms are summed)::

        distiller = keras.distillation.Distiller(
            teacher, student, TemperatureKLDistillation(temperature=4.0),
            student_loss_weight=0.1)

    Reference: Hinton, Vinyals & Dean, arXiv:1503.02531, 2015.
    """

    def __init__(self, temperature: float = 4.0) -> None:
        self.temperature = _check_temperature(temperature)

    def compute_loss(self, teacher_outputs: Any, student_outputs: Any, **kwargs: Any) -> Any:
        losses = keras.tree.flatten(keras.tree.map_structure(
            lambda t, s: distillation_kl(t, s, self.temperature), teacher_outputs, student_outputs))
        return losses[0] if len(losses) == 1 else ops.sum(ops.stack(losses))

    def get_config(self) -> dict[str, Any]:
        return {"temperature": self.temperature}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "TemperatureKLDistillation":
        return cls(**config)


@functools.lru_cache(maxsize=None)
def _keras_string_kl_is_wrong() -> bool:
    """Whether this Keras's ``LogitsDistillation(loss="kl_divergence")`` misses the formula.

    Probed once on fixed logits, so the guard turns itself off on a Keras that
    fixes the bug.
    """
    teacher = np.array([[2.0, -1.0, 0.5], [0.1, 0.2, -3.0]], np.float32)
    student = np.array([[0.5, 1.0, -0.5], [1.0, -1.0, 0.0]], np.float32)
    got = float(keras.distillation.LogitsDistillation(temperature=2.0).compute_loss(teacher, student))
    want = float(distillation_kl(teacher, student, 2.0))
    return not math.isclose(got, want, rel_tol=1e-4, abs_tol=1e-6)


def _is_plain_kl_function(loss: Any) -> bool:
    return (loss is keras.losses.kl_divergence or (
        callable(loss) and not isinstance(loss, keras.losses.Loss)
        and getattr(loss, "__name__", "") in ("kl_divergence", "kld", "KLD", "kullback_leibler_divergence")))


def check_distillation_losses(distillation_losses: Any) -> list:
    """Return the losses as a list; raise if one would compute the wrong KL.

    Raises ``ValueError`` for a ``keras.distillation.LogitsDistillation``
    whose loss (or any leaf of its loss structure) is the string
    ``"kl_divergence"``/``"kld"`` resolved to a function, when the installed
    Keras computes that case without softmax and ``T^2`` (probed once; Keras
    3.15 does). Use :class:`TemperatureKLDistillation`, or
    ``LogitsDistillation(loss=keras.losses.KLDivergence())``.
    """
    losses = list(distillation_losses) if isinstance(distillation_losses, (list, tuple)) else [distillation_losses]
    for i, loss in enumerate(losses):
        if not isinstance(loss, keras.distillation.DistillationLoss):
            raise TypeError(f"distillation_losses[{i}] must be a keras.distillation.DistillationLoss, "
                            f"got {type(loss).__name__}")
        if isinstance(loss, keras.distillation.LogitsDistillation) and any(
                _is_plain_kl_function(leaf) for leaf in keras.tree.flatten(loss.loss)):
            if _keras_string_kl_is_wrong():
                raise ValueError(
                    f"distillation_losses[{i}]: keras.distillation.LogitsDistillation with "
                    "loss='kl_divergence' (its default) takes KL on logits/T instead of on "
                    "softmax(logits/T) and drops the T^2 factor in this Keras version (the string "
                    "resolves to a function, so the isinstance(loss_fn, keras.losses.KLDivergence) "
                    "branch is skipped). Use fusedopt.training.TemperatureKLDistillation(temperature) "
                    "or LogitsDistillation(temperature, loss=keras.losses.KLDivergence()).")
    return losses


def _sum_losses(losses: Sequence[Any], dtype: Any) -> Any:
    return ops.sum(ops.stack([ops.cast(l, dtype) for l in losses]))


@keras.saving.register_keras_serializable(package="fusedopt")
class Distiller(keras.distillation.Distiller):
    r"""``keras.distillation.Distiller`` that keeps the student's regularization losses.

    Same arguments and training as the Keras class (total loss
    ``alpha * student_loss + (1 - alpha) * sum_i w_i * distillation_loss_i``
    with ``alpha = student_loss_weight``), plus two fixes:

    * ``+ sum(student.losses)``: Keras 3.15's ``Distiller.compute_loss``
      drops the student's weight regularizers and ``add_loss`` terms;
    * the distillation losses go through :func:`check_distillation_losses`,
      which refuses ``LogitsDistillation(loss="kl_divergence")`` where the
      installed Keras computes it wrongly.

    Save the trained student alone with ``distiller.student.save(path)``.
    Like the Keras class, ``sample_weight`` is not used.
    """

    def __init__(self, teacher: keras.Model, student: keras.Model, distillation_losses: Any,
                 distillation_loss_weights: Sequence[float] | None = None,
                 student_loss_weight: float = 0.5, name: str = "distiller", **kwargs: Any) -> None:
        check_distillation_losses(distillation_losses)
        super().__init__(teacher, student, distillation_losses,
                         distillation_loss_weights=distillation_loss_weights,
                         student_loss_weight=student_loss_weight, name=name, **kwargs)

    def compute_loss(self, x: Any = None, y: Any = None, y_pred: Any = None, sample_weight: Any = None,
                     training: bool = True) -> Any:
        total = super().compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=training)
        extra = self.student.losses
        if extra:
            total = ops.add(total, _sum_losses(extra, total.dtype))
        return total


def build_distiller(
    teacher: keras.Model,
    student: keras.Model,
    *,
    temperature: float = 4.0,
    alpha: float = 0.1,
    optimizer: Any = None,
    hard_loss: Any = None,
    metrics: Sequence[Any] | None = None,
    distillation_losses: Any = None,
    **compile_kwargs: Any,
) -> Distiller:
    r"""An online distiller with Hinton et al.'s loss, compiled if ``optimizer`` is given.

    .. math::

        L = \alpha \cdot \mathrm{CE}(y, \mathrm{softmax}(s))
            + (1 - \alpha) \cdot T^2\,\mathrm{KL}(\mathrm{softmax}(t/T) \,\|\, \mathrm{softmax}(s/T))
            + \sum \text{student regularization losses}

    Both models must output logits. The teacher is frozen (``trainable =
    False``) and called with ``training=False`` on every batch. ``hard_loss``
    defaults to ``SparseCategoricalCrossentropy(from_logits=True)``;
    ``distillation_losses`` defaults to
    ``TemperatureKLDistillation(temperature)``. Hinton et al. found a small
    weight on the hard-label term works best, hence ``alpha=0.1``.
    ``compile_kwargs`` (e.g. ``steps_per_execution``) go to ``compile``.

    Example::

        distiller = build_distiller(teacher, student, temperature=4.0, alpha=0.1,
                                    optimizer=fusedopt.keras.Adam(1e-3),
                                    metrics=["accuracy"])
        distiller.fit(x, y, epochs=10)
        distiller.student.save("student.keras")

    Reference: Hinton, Vinyals & Dean, arXiv:1503.02531, 2015.
    """
    alpha = _check_alpha(alpha)
    if distillation_losses is None:
        distillation_losses = TemperatureKLDistillation(temperature)
    distiller = Distiller(teacher, student, distillation_losses, student_loss_weight=alpha)
    if optimizer is not None:
        distiller.compile(optimizer=optimizer,
                          loss=(hard_loss if hard_loss is not None
                                else keras.losses.SparseCategoricalCrossentropy(from_logits=True)),
                          metrics=list(metrics) if metrics is not None else None, **compile_kwargs)
    elif compile_kwargs:
        raise ValueError("compile arguments need optimizer=")
    return distiller


def cache_teacher_logits(teacher: keras.Model, x: Any, *, path: str | os.PathLike | None = None,
                         batch_size: int = 256) -> np.ndarray:
    """Run the teacher once (inference mode) and return its logits as float32.

    With ``path`` the logits are also written to a ``.npy`` file and the
    returned array is that file, memory-mapped read-only
    (``np.load(path, mmap_mode="r")``), so a later run can start from
    ``np.load(path, mmap_mode="r")`` without the teacher.
    """
    logits = np.asarray(teacher.predict(x, batch_size=batch_size, verbose=0), dtype=np.float32)
    if path is None:
        return logits
    path = os.fspath(path)
    np.save(path, logits)
    return np.load(path if path.endswith(".npy") else path + ".npy", mmap_mode="r")


class DistillationDataset(keras.utils.PyDataset):
    """Batches ``(x, (y, teacher_logits))`` for :class:`OfflineDistiller`, reshuffled each epoch.

    ``teacher_logits`` may be a memory-mapped ``.npy`` (from
    :func:`cache_teacher_logits`); only the rows of each batch are read.
    """

    def __init__(self, x: Any, y: Any, teacher_logits: Any, batch_size: int = 32, *,
                 shuffle: bool = True, seed: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        n = len(x)
        if len(y) != n or len(teacher_logits) != n:
            raise ValueError(f"x, y and teacher_logits must have the same length, got "
                             f"{n}, {len(y)} and {len(teacher_logits)}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        self.x, self.y, self.teacher_logits = x, y, teacher_logits
        self.batch_size = batch_size
        self.shuffle = shuffle
        self._rng = np.random.default_rng(seed)
        self._order = self._rng.permutation(n) if shuffle else np.arange(n)

    def __len__(self) -> int:
        return -(-len(self.x) // self.batch_size)

    def __getitem__(self, index: int) -> tuple[Any, tuple[Any, Any]]:
        rows = np.sort(self._order[index * self.batch_size:(index + 1) * self.batch_size])
        return (np.asarray(self.x[rows]),
                (np.asarray(self.y[rows]), np.asarray(self.teacher_logits[rows], dtype=np.float32)))

    def on_epoch_end(self) -> None:
        if self.shuffle:
            self._order = self._rng.permutation(len(self.x))


@keras.saving.register_keras_serializable(package="fusedopt")
class OfflineDistiller(keras.Model):
    r"""Trains a student on hard labels and *cached* teacher logits.

    Targets are ``(y, teacher_logits)`` pairs (see :class:`DistillationDataset`);
    the loss is

    .. math::

        L = \alpha \cdot \mathrm{hard\_loss}(y, s)
            + (1 - \alpha) \cdot T^2\,\mathrm{KL}(\mathrm{softmax}(t/T) \,\|\, \mathrm{softmax}(s/T))
            + \sum \text{student.losses}

    (:func:`distillation_kl`; Hinton, Vinyals & Dean, arXiv:1503.02531). With
    plain targets ``y`` (e.g. in ``evaluate``), only the hard-label term is
    used. Compiled metrics see ``y``. Save the student alone with
    ``offline.student.save(path)``::

        logits = cache_teacher_logits(teacher, x_train, path="teacher_logits.npy")
        offline = OfflineDistiller(student, temperature=4.0, alpha=0.1)
        offline.compile(optimizer=fusedopt.keras.Adam(1e-3), metrics=["accuracy"])
        offline.fit(DistillationDataset(x_train, y_train, logits, 64), epochs=10)
        offline.student.save("student.keras")
    """

    def __init__(self, student: keras.Model, temperature: float = 4.0, alpha: float = 0.1,
                 hard_loss: Any = None, name: str = "offline_distiller", **kwargs: Any) -> None:
        super().__init__(name=name, **kwargs)
        self.student = student
        self.temperature = _check_temperature(temperature)
        self.alpha = _check_alpha(alpha)
        if hard_loss is None:
            hard_loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        else:
            hard_loss = keras.losses.get(hard_loss)
            if not isinstance(hard_loss, keras.losses.Loss):
                hard_loss = keras.losses.LossFunctionWrapper(hard_loss)
        self.hard_loss = hard_loss
        self.student_loss_tracker = keras.metrics.Mean(name="student_loss")
        self.distillation_loss_tracker = keras.metrics.Mean(name="distillation_loss")

    def call(self, inputs: Any, training: bool | None = None) -> Any:
        return self.student(inputs, training=training)

    @staticmethod
    def _split(y: Any) -> tuple[Any, Any]:
        if isinstance(y, (tuple, list)) and len(y) == 2:
            return y[0], y[1]
        return y, None

    def compute_loss(self, x: Any = None, y: Any = None, y_pred: Any = None, sample_weight: Any = None,
                     training: bool = True) -> Any:
        if y_pred is None:
            y_pred = self(x, training=training)
        labels, teacher_logits = self._split(y)
        hard = ops.cast(self.hard_loss(labels, y_pred, sample_weight=sample_weight), "float32")
        self.student_loss_tracker.update_state(hard)
        if teacher_logits is None:
            total = hard
        else:
            soft = ops.cast(distillation_kl(teacher_logits, y_pred, self.temperature, sample_weight), "float32")
            self.distillation_loss_tracker.update_state(soft)
            total = self.alpha * hard + (1.0 - self.alpha) * soft
        extra = self.student.losses
        if extra:
            total = total + _sum_losses(extra, "float32")
        return total

    def compute_metrics(self, x: Any, y: Any, y_pred: Any, sample_weight: Any = None) -> dict[str, Any]:
        return super().compute_metrics(x, self._split(y)[0], y_pred, sample_weight)

    def get_config(self) -> dict[str, Any]:
        return {"student": keras.saving.serialize_keras_object(self.student),
                "temperature": self.temperature, "alpha": self.alpha,
                "hard_loss": keras.losses.serialize(self.hard_loss), "name": self.name}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "OfflineDistiller":
        config = dict(config)
        config["student"] = keras.saving.deserialize_keras_object(config["student"])
        config["hard_loss"] = keras.losses.deserialize(config["hard_loss"])
        return cls(**config)
