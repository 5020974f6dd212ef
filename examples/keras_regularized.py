"""A Keras MLP with L1/L2 weight penalties and Dropout: fusedopt.keras vs Keras built-ins.

Data: scikit-learn's 8x8 digits (1797 images, 10 classes; 75% train, 25% test).
Model: 64 -> Dense(256, relu, L2(1e-4)) -> Dropout(0.2)
          -> Dense(128, relu, L1(1e-5)) -> Dropout(0.2) -> Dense(10).
The same model (same initial weights, same batches) is trained with each
optimizer twice: once with `fusedopt.keras` (the optimizer,
`fusedopt.keras.regularizers` and `fusedopt.keras.layers.Dropout`) and once
with the Keras built-ins. The table gives test
accuracy and the median time of one training step (`train_on_batch`-sized
step inside `fit`, measured by a callback, first epoch excluded).

Run: python examples/keras_regularized.py [--quick] [--epochs N]
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402

import fusedopt.keras  # noqa: E402
from fusedopt.keras import layers as flayers  # noqa: E402
from fusedopt.keras import regularizers as fregs  # noqa: E402


def digits(seed: int = 0) -> tuple[np.ndarray, ...]:
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype("float32")
    return tuple(train_test_split(x, y.astype("int32"), test_size=0.25, stratify=y, random_state=seed))


def building_blocks(impl: str) -> dict[str, Any]:
    """L1, L2 and Dropout classes for `impl` ("fusedopt" or "keras"), and where they came from."""
    blocks = {"L1": keras.regularizers.L1, "L2": keras.regularizers.L2, "Dropout": keras.layers.Dropout,
              "regularizers": "keras.regularizers", "dropout": "keras.layers.Dropout"}
    if impl == "fusedopt":
        blocks.update(L1=fregs.L1, L2=fregs.L2, Dropout=flayers.Dropout,
                      regularizers="fusedopt.keras.regularizers", dropout="fusedopt.keras.layers.Dropout")
    return blocks


def build_model(blocks: dict[str, Any], seed: int) -> keras.Model:
    keras.utils.set_random_seed(seed)
    return keras.Sequential([
        keras.Input((64,)),
        keras.layers.Dense(256, activation="relu", kernel_regularizer=blocks["L2"](1e-4)),
        blocks["Dropout"](0.2, seed=seed),
        keras.layers.Dense(128, activation="relu", kernel_regularizer=blocks["L1"](1e-5)),
        blocks["Dropout"](0.2, seed=seed + 1),
        keras.layers.Dense(10),
    ], name="mlp")


OPTIMIZERS: dict[str, tuple[str, dict[str, Any]]] = {
    "SGD (momentum 0.9)": ("SGD", {"learning_rate": 0.05, "momentum": 0.9}),
    "RMSprop": ("RMSprop", {"learning_rate": 1e-3}),
    "Adam": ("Adam", {"learning_rate": 1e-3}),
    "AdamW": ("AdamW", {"learning_rate": 1e-3, "weight_decay": 1e-3}),
}


class StepTimer(keras.callbacks.Callback):
    """Wall time of each training step (batch begin to batch end), per epoch."""

    def __init__(self) -> None:
        super().__init__()
        self.times: list[list[float]] = []

    def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
        self.times.append([])

    def on_train_batch_begin(self, batch: int, logs: Any = None) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
        self.times[-1].append(time.perf_counter() - self._start)

    def median_ms(self) -> float:
        steady = [t for epoch in (self.times[1:] or self.times) for t in epoch]
        return 1e3 * float(np.median(steady))


def train(impl: str, opt_name: str, data: tuple[np.ndarray, ...], epochs: int, seed: int = 0) -> dict[str, Any]:
    x_train, x_test, y_train, y_test = data
    blocks = building_blocks(impl)
    model = build_model(blocks, seed)
    cls_name, kwargs = OPTIMIZERS[opt_name]
    optimizer = getattr(fusedopt.keras if impl == "fusedopt" else keras.optimizers, cls_name)(**kwargs)
    model.compile(optimizer=optimizer, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    timer = StepTimer()
    history = model.fit(x_train, y_train, batch_size=32, epochs=epochs, shuffle=True, verbose=0,
                        callbacks=[timer])
    _, accuracy = model.evaluate(x_test, y_test, verbose=0)
    return {"optimizer": opt_name, "impl": impl,
            "optimizer_class": f"{type(optimizer).__module__.split('.')[0]}.{type(optimizer).__name__}",
            "regularizers": blocks["regularizers"], "dropout": blocks["dropout"],
            "first_loss": history.history["loss"][0], "last_loss": history.history["loss"][-1],
            "accuracy": float(accuracy), "ms_per_step": timer.median_ms()}


def print_table(rows: list[dict[str, Any]]) -> None:
    print(f"| {'optimizer':<18} | {'implementation':<14} | {'loss epoch 1':>12} | {'final loss':>10} "
          f"| {'test acc':>8} | {'ms/step':>7} |")
    print(f"|{'-' * 20}|{'-' * 16}|{'-' * 14}|{'-' * 12}|{'-' * 10}|{'-' * 9}|")
    for r in rows:
        print(f"| {r['optimizer']:<18} | {r['impl']:<14} | {r['first_loss']:>12.4f} | {r['last_loss']:>10.4f} "
              f"| {r['accuracy']:>8.4f} | {r['ms_per_step']:>7.2f} |")


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 epochs, Adam only (for tests)")
    parser.add_argument("--epochs", type=int, default=None)
    args = parser.parse_args(argv)
    epochs = args.epochs or (2 if args.quick else 20)
    names = ["Adam"] if args.quick else list(OPTIMIZERS)
    start = time.perf_counter()
    data = digits()
    rows = [train(impl, name, data, epochs) for name in names for impl in ("fusedopt", "keras")]
    fused = building_blocks("fusedopt")
    print(f"digits MLP, {epochs} epochs, batch 32; fusedopt rows use fusedopt.keras optimizers, "
          f"{fused['regularizers']} and {fused['dropout']}; keras rows use keras.optimizers, "
          "keras.regularizers and keras.layers.Dropout")
    print(f"fused TF op loaded: {fusedopt.keras.op_library_status()['loaded']}")
    print_table(rows)
    print(f"elapsed {time.perf_counter() - start:.0f} s")
    return rows


if __name__ == "__main__":
    main()
