"""Knowledge distillation on digits: a deep teacher, a shallow student, online and offline.

Loss (Hinton, Vinyals & Dean 2015), teacher logits t, student logits s:

    L = alpha * CE(y, softmax(s)) + (1 - alpha) * T^2 * KL(softmax(t/T) || softmax(s/T))

with T = 4, alpha = 0.1. Rows:

* teacher: 64 -> 256 -> 256 -> 128 -> 10 with Dropout, hard labels;
* student from scratch: 64 -> 12 -> 10 (same initial weights in every row),
  hard labels only;
* online: `fusedopt.training.build_distiller` (keras.distillation.Distiller
  with `TemperatureKLDistillation`); the teacher runs on every batch;
* offline: the teacher runs once, `cache_teacher_logits` writes its logits to
  a .npy file, `OfflineDistiller` trains on (x, (y, cached logits)) batches
  from `DistillationDataset`; the student is saved alone (.keras) and the
  accuracy is that of the reloaded file;
* for comparison, Keras's own `LogitsDistillation()` with its default
  loss="kl_divergence", which in Keras 3.15 takes KL on logits/T instead of
  on the softmaxes (and without T^2).

Accuracies are on the held-out 25% of the data, averaged over --seeds
student initializations.

Run: python examples/distillation.py [--quick] [--epochs N] [--seeds K]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from typing import Any

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402

import fusedopt.keras  # noqa: E402
import fusedopt.training as ft  # noqa: E402

TEMPERATURE = 4.0
ALPHA = 0.1
STUDENT_LR = 1e-2
STEPS_PER_EXECUTION = 8  # fewer Python round trips per epoch on a tiny model
LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def digits(seed: int = 0) -> tuple[np.ndarray, ...]:
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype("float32")
    return tuple(train_test_split(x, y.astype("int32"), test_size=0.25, stratify=y, random_state=seed))


def teacher_model(seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    return keras.Sequential([
        keras.Input((64,)),
        keras.layers.Dense(256, activation="relu"), keras.layers.Dropout(0.3),
        keras.layers.Dense(256, activation="relu"), keras.layers.Dropout(0.3),
        keras.layers.Dense(128, activation="relu"),
        keras.layers.Dense(10),
    ], name="teacher")


def student_model(seed: int) -> keras.Model:
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((64,)), keras.layers.Dense(12, activation="relu"),
                             keras.layers.Dense(10)], name="student")


def accuracy(model: keras.Model, x: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(np.argmax(model.predict(x, verbose=0), axis=-1) == y))


def run(epochs: int, seeds: int, teacher_epochs: int, student_samples: int) -> list[dict[str, Any]]:
    x_train, x_test, y_train, y_test = digits()
    # The student sees only the first `student_samples` training images (stratified
    # order): the regime where the teacher's soft targets carry the most information.
    x_small, y_small = x_train[:student_samples], y_train[:student_samples]
    rows: list[dict[str, Any]] = []

    start = time.perf_counter()
    teacher = teacher_model()
    teacher.compile(optimizer=fusedopt.keras.Adam(1e-3), loss=LOSS)
    teacher.fit(x_train, y_train, batch_size=64, epochs=teacher_epochs, verbose=0)
    rows.append({"model": "teacher", "params": teacher.count_params(), "training": "hard labels",
                 "acc": [accuracy(teacher, x_test, y_test)], "seconds": time.perf_counter() - start})

    def record(name: str, acc: float, seconds: float, params: int, history: Any) -> None:
        row = next((r for r in rows if r["training"] == name), None)
        if row is None:
            row = {"model": "student", "params": params, "training": name, "acc": [], "seconds": 0.0,
                   "losses": []}
            rows.append(row)
        row["acc"].append(acc)
        row["seconds"] += seconds / seeds
        row["losses"].append((history.history["loss"][0], history.history["loss"][-1]))

    with tempfile.TemporaryDirectory() as tmp:
        # Offline: run the teacher once; its logits live in a .npy file from now on.
        start = time.perf_counter()
        cached = ft.cache_teacher_logits(teacher, x_small, path=os.path.join(tmp, "teacher_logits.npy"))
        cache_seconds = time.perf_counter() - start

        for seed in range(1, seeds + 1):
            start = time.perf_counter()
            student = student_model(seed)
            student.compile(optimizer=fusedopt.keras.Adam(STUDENT_LR), loss=LOSS,
                            steps_per_execution=STEPS_PER_EXECUTION)
            history = student.fit(x_small, y_small, batch_size=32, epochs=epochs, verbose=0)
            record("from scratch (hard labels)", accuracy(student, x_test, y_test),
                   time.perf_counter() - start, student.count_params(), history)

            start = time.perf_counter()
            student = student_model(seed)
            distiller = ft.build_distiller(teacher, student, temperature=TEMPERATURE, alpha=ALPHA,
                                           optimizer=fusedopt.keras.Adam(STUDENT_LR),
                                           steps_per_execution=STEPS_PER_EXECUTION)
            history = distiller.fit(x_small, y_small, batch_size=32, epochs=epochs, verbose=0)
            record("online distillation", accuracy(distiller.student, x_test, y_test),
                   time.perf_counter() - start, student.count_params(), history)

            start = time.perf_counter()
            student = student_model(seed)
            offline = ft.OfflineDistiller(student, temperature=TEMPERATURE, alpha=ALPHA)
            offline.compile(optimizer=fusedopt.keras.Adam(STUDENT_LR), steps_per_execution=STEPS_PER_EXECUTION)
            history = offline.fit(ft.DistillationDataset(x_small, y_small, cached, batch_size=32, seed=seed),
                                  epochs=epochs, verbose=0)
            path = os.path.join(tmp, f"student_{seed}.keras")
            offline.student.save(path)  # the student alone
            reloaded = keras.saving.load_model(path)
            record("offline distillation (cached logits)", accuracy(reloaded, x_test, y_test),
                   time.perf_counter() - start + cache_seconds, student.count_params(), history)

            start = time.perf_counter()
            student = student_model(seed)
            keras_default = keras.distillation.Distiller(
                teacher, student, keras.distillation.LogitsDistillation(temperature=TEMPERATURE),
                student_loss_weight=ALPHA)
            keras_default.compile(optimizer=fusedopt.keras.Adam(STUDENT_LR), loss=LOSS,
                                  steps_per_execution=STEPS_PER_EXECUTION)
            history = keras_default.fit(x_small, y_small, batch_size=32, epochs=epochs, verbose=0)
            record("online, Keras LogitsDistillation() default", accuracy(student, x_test, y_test),
                   time.perf_counter() - start, student.count_params(), history)
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    print(f"| {'model':<7} | {'params':>6} | {'training':<42} | {'test acc (mean +- std)':>22} "
          f"| {'train s':>7} |")
    print(f"|{'-' * 9}|{'-' * 8}|{'-' * 44}|{'-' * 24}|{'-' * 9}|")
    for r in rows:
        acc = np.asarray(r["acc"])
        cell = f"{acc.mean():.4f} +- {acc.std():.4f}" if len(acc) > 1 else f"{acc.mean():.4f}"
        print(f"| {r['model']:<7} | {r['params']:>6} | {r['training']:<42} | {cell:>22} | {r['seconds']:>7.1f} |")


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few epochs, one seed (for tests)")
    parser.add_argument("--epochs", type=int, default=None, help="student epochs")
    parser.add_argument("--seeds", type=int, default=None)
    parser.add_argument("--student-samples", type=int, default=200,
                        help="labeled training images the students see")
    args = parser.parse_args(argv)
    epochs = args.epochs or (4 if args.quick else 60)
    seeds = args.seeds or (1 if args.quick else 3)
    start = time.perf_counter()
    rows = run(epochs, seeds, teacher_epochs=3 if args.quick else 25, student_samples=args.student_samples)
    print(f"digits, teacher trained on 1347 images, students on {args.student_samples}; T={TEMPERATURE}, "
          f"alpha={ALPHA}, student {epochs} epochs x {seeds} seeds, optimizer fusedopt.keras.Adam")
    print_table(rows)
    print(f"elapsed {time.perf_counter() - start:.0f} s")
    return rows


if __name__ == "__main__":
    main()
