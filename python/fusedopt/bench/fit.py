"""`--fit`: end-to-end `model.fit` step time, fusedopt.keras.Adam against keras.optimizers.Adam.

The model is an MLP of 50 hidden Dense layers (102 variables, ~0.8M
parameters). Both models train in the same process, one epoch each in turn
(the first round is warm-up and tracing; many short rounds, so that both
see the same drift of a shared machine); each step is timed from
``on_train_batch_begin`` to ``on_train_batch_end``. The fusedopt record
says that its fused op ran (``fused``), read from the functions its first
round traced; where fusedopt.keras fell back to Keras's update, or a model's
fit raised, that model is an error instead and stops training.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from fusedopt.bench import fused_op, impls
from fusedopt.bench.suite import Case, error_entry
from fusedopt.bench.timing import Timing

LAYERS, WIDTH, CLASSES, BATCH, STEPS, ROUNDS = 50, 128, 10, 256, 8, 11


def _model(optimizer: Any, seed: int) -> Any:
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((WIDTH,))
    x = inputs
    for _ in range(LAYERS):
        x = keras.layers.Dense(WIDTH, activation="relu")(x)
    model = keras.Model(inputs, keras.layers.Dense(CLASSES)(x))
    model.compile(optimizer=optimizer, jit_compile=False,
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def run_fit(config: Any, progress: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[str]]:
    """Records for ("adam", "fit") of both optimizers, errors (see the module docstring), and notes."""
    problem = impls.library_problem("fusedopt-keras")
    if problem:
        progress.show("fit", "skipped", advance=True)
        progress.show("fit", "skipped", advance=True)
        return [], [], [f"--fit skipped: fusedopt.keras is not available ({problem})"]
    import keras

    import fusedopt.keras as fk

    rng = np.random.default_rng(config.seed)
    x = rng.standard_normal((BATCH * STEPS, WIDTH), dtype=np.float32)
    y = rng.integers(0, CLASSES, BATCH * STEPS)
    impls.set_threads(max(config.threads))
    models = {"keras-function": _model(keras.optimizers.Adam(1e-3), config.seed),
              "fusedopt-keras": _model(fk.Adam(1e-3), config.seed)}
    times: dict[str, list[float]] = {name: [] for name in models}

    class Timer(keras.callbacks.Callback):
        def __init__(self, sink: list[float]) -> None:
            super().__init__()
            self.sink, self.t0 = sink, 0.0

        def on_train_batch_begin(self, batch: int, logs: Any = None) -> None:
            self.t0 = time.perf_counter()

        def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
            self.sink.append(time.perf_counter() - self.t0)

    variables = len(models["keras-function"].trainable_variables)  # the same model twice
    errors: list[dict[str, Any]] = []
    fused: dict[str, bool] = {}
    for round_ in range(ROUNDS):
        for name, model in list(models.items()):
            progress.show(f"fit {name}", f"round {round_ + 1}/{ROUNDS}")
            try:
                with fused_op.functions_traced() as traced:  # the first round traces the train step
                    model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0,
                              callbacks=[Timer(times[name])])
                if round_ == 0 and name == "fusedopt-keras":
                    fused[name] = fused_op.require_fused(traced, variables, "fusedopt.keras.Adam in model.fit")
            except Exception as err:  # noqa: BLE001 - as a case of the suite: reported, the run goes on
                errors.append(error_entry(Case("adam", "fit", "float32", name, max(config.threads)), err))
                del models[name]
                progress.show(f"fit {name}", f"error: {errors[-1]['error']}", advance=True)
    records = []
    for name, model in models.items():
        timing = Timing(tuple(times[name][STEPS:]), times[name][0])
        records.append({
            "rule": "adam", "implementation": name, "size_case": "fit", "dtype": "float32",
            "threads": impls.thread_count(name, max(config.threads)),
            "elements": int(sum(np.prod(v.shape) for v in model.trainable_variables)),
            "tensors": len(model.trainable_variables), "repeats": len(timing.times),
            "median_s": timing.median_s, "spread": timing.spread(), "first_call_s": timing.first_call_s,
            **({"fused": fused[name]} if name in fused else {}),
        })
        progress.show(f"fit {name}", f"{timing.median_s * 1e3:.3g} ms", advance=True)
    note = (f"fit: MLP with {LAYERS} hidden Dense({WIDTH}) layers ({variables} variables), "
            f"batch {BATCH}; median model.fit step time over {STEPS * (ROUNDS - 1)} steps")
    return records, errors, [note]
