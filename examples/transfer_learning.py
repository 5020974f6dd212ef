"""Transfer learning on digits: pretrain on 0-4, fine-tune on 5-9 with few labels.

Base: 8x8 image -> Conv(16, 3x3) -> BatchNorm -> Conv(32, 3x3) -> BatchNorm
-> MaxPool(2) -> Dense(64) (relu), pretrained with a 5-way head on every
training image of digits 0-4 (ordinary training: BatchNorm learns its
statistics there).
Target task: digits 5-9 with only --shots labeled images per class; test on
all held-out images of 5-9. Rows (each averaged over --seeds draws of the
labeled subset):

* from scratch: the same architecture, fresh weights, trained on the subset
  (ordinary training, BatchNorm included);
* frozen base: `fusedopt.training.transfer_model` (base frozen and kept in
  inference mode) + a new Dense(5) head; only the head trains;
* fine-tuned, one rate: then `unfreeze` (BatchNorm kept frozen) and train
  everything with one small learning rate;
* fine-tuned, per-layer rates + L2-SP: `unfreeze` with
  `discriminative_optimizer(layerwise_decay(...))` (each layer below gets
  the rate of the one above / 2.6; Howard & Ruder 2018) and `attach_l2sp`
  (alpha/2 ||w - w0||^2 on the base, beta/2 ||w||^2 on the head; Li et al. 2018).

All optimizers are `fusedopt.keras.Adam` (one per learning rate inside
`keras.optimizers.MultiOptimizer`). A second table shows, for the last row,
each layer's learning rate and how far its kernel moved from the pretrained
value (||w - w0|| / ||w0||).

Run: python examples/transfer_learning.py [--quick] [--shots N] [--seeds K]
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
import fusedopt.training as ft  # noqa: E402

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
BASE_LAYERS = ("c1", "c2", "d3")  # the layers with weights, input to output
HEAD_LR = 3e-3
FINE_TUNE_LR = 1e-3
L2SP_ALPHA, L2SP_BETA = 0.01, 0.001


def split(seed: int = 0) -> dict[str, np.ndarray]:
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype("float32")
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.25, stratify=y, random_state=seed)
    src, tgt_train, tgt_test = y_train < 5, y_train >= 5, y_test >= 5
    return {"x_src": x_train[src], "y_src": y_train[src].astype("int32"),
            "x_tgt": x_train[tgt_train], "y_tgt": (y_train[tgt_train] - 5).astype("int32"),
            "x_test": x_test[tgt_test], "y_test": (y_test[tgt_test] - 5).astype("int32")}


def make_base(seed: int) -> keras.Model:
    keras.utils.set_random_seed(seed)
    layers = keras.layers
    return keras.Sequential([
        keras.Input((64,)), layers.Reshape((8, 8, 1)),
        layers.Conv2D(16, 3, padding="same", activation="relu", name="c1"), layers.BatchNormalization(name="bn1"),
        layers.Conv2D(32, 3, padding="same", activation="relu", name="c2"), layers.BatchNormalization(name="bn2"),
        layers.MaxPooling2D(2), layers.Flatten(), layers.Dense(64, activation="relu", name="d3"),
    ], name="base")


def make_classifier(base: keras.Model, seed: int, name: str) -> keras.Model:
    keras.utils.set_random_seed(seed)
    return ft.transfer_model(base, keras.layers.Dense(5, name="head"), freeze_base=False, name=name)


def few_shot(data: dict[str, np.ndarray], shots: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    rows = np.concatenate([rng.choice(np.flatnonzero(data["y_tgt"] == c), shots, replace=False) for c in range(5)])
    return data["x_tgt"][rows], data["y_tgt"][rows]


def fit(model: keras.Model, x: np.ndarray, y: np.ndarray, steps: int) -> None:
    """`steps` Adam steps on batches of 25 from the (tiny) subset, 5 epochs over a tiled copy."""
    reps = -(-steps * 25 // (5 * len(x)))
    model.fit(np.tile(x, (reps, 1)), np.tile(y, reps), batch_size=25, epochs=5, shuffle=True, verbose=0)


def accuracy(model: keras.Model, x: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(np.argmax(model.predict(x, verbose=0), axis=-1) == y))


def run(shots: int, seeds: int, steps: int, pretrain_epochs: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]], str]:
    data = split()
    # Pretrain on digits 0-4.
    pretrained = make_base(seed=0)
    # Pretraining is ordinary training: BatchNorm learns its statistics on 0-4.
    source_model = keras.Sequential([pretrained, keras.layers.Dense(5, name="source_head")], name="source")
    source_model.compile(optimizer=fusedopt.keras.Adam(1e-3), loss=LOSS, steps_per_execution=10)
    source_model.fit(data["x_src"], data["y_src"], batch_size=32, epochs=pretrain_epochs, verbose=0)
    pretrained_weights = pretrained.get_weights()

    results: dict[str, list[float]] = {}
    layer_rows: list[dict[str, Any]] = []
    implementation = ""
    for seed in range(1, seeds + 1):
        x, y = few_shot(data, shots, seed)

        scratch_base = make_base(seed)
        keras.utils.set_random_seed(seed)
        scratch = keras.Sequential([scratch_base, keras.layers.Dense(5, name="head")], name="scratch")
        scratch.compile(optimizer=fusedopt.keras.Adam(HEAD_LR), loss=LOSS, steps_per_execution=10)
        fit(scratch, x, y, 2 * steps)
        results.setdefault("from scratch", []).append(accuracy(scratch, data["x_test"], data["y_test"]))

        for variant in ("one rate", "per-layer rates + L2-SP"):
            base = make_base(0)
            base.set_weights(pretrained_weights)
            model = make_classifier(base, seed, "transfer")
            ft.freeze(model, base)  # before compile: nothing to recompile yet
            model.compile(optimizer=fusedopt.keras.Adam(HEAD_LR), loss=LOSS, steps_per_execution=10)
            fit(model, x, y, steps)
            if variant == "one rate":
                results.setdefault("frozen base, new head", []).append(
                    accuracy(model, data["x_test"], data["y_test"]))
                ft.unfreeze(model, base, optimizer=fusedopt.keras.Adam(FINE_TUNE_LR))
            else:
                rates = ft.layerwise_decay([base.get_layer(n) for n in BASE_LAYERS], FINE_TUNE_LR)
                rates[model.get_layer("head")] = FINE_TUNE_LR
                ft.unfreeze(model, base, optimizer=ft.discriminative_optimizer(
                    model, rates, default_learning_rate=FINE_TUNE_LR))
                info = ft.attach_l2sp(model, base, alpha=L2SP_ALPHA, beta=L2SP_BETA)
                implementation = info.implementation
            fit(model, x, y, steps)
            results.setdefault(f"fine-tuned, {variant}", []).append(
                accuracy(model, data["x_test"], data["y_test"]))
        if seed == 1:  # how far each layer moved in the last variant
            for name in BASE_LAYERS:
                w0 = pretrained.get_layer(name).kernel.numpy()
                w = base.get_layer(name).kernel.numpy()
                layer_rows.append({"layer": f"base/{name}", "lr": rates[base.get_layer(name)],
                                   "moved": float(np.linalg.norm(w - w0) / np.linalg.norm(w0))})
    rows = [{"setup": k, "acc": v} for k, v in results.items()]
    return rows, layer_rows, implementation


def print_tables(rows: list[dict[str, Any]], layer_rows: list[dict[str, Any]]) -> None:
    print(f"| {'setup':<37} | {'test acc (mean +- std)':>22} |")
    print(f"|{'-' * 39}|{'-' * 24}|")
    for r in rows:
        acc = np.asarray(r["acc"])
        cell = f"{acc.mean():.4f} +- {acc.std():.4f}" if len(acc) > 1 else f"{acc.mean():.4f}"
        print(f"| {r['setup']:<37} | {cell:>22} |")
    print()
    print(f"| {'layer':<8} | {'learning rate':>13} | {'||w - w0|| / ||w0||':>19} |")
    print(f"|{'-' * 10}|{'-' * 15}|{'-' * 21}|")
    for r in layer_rows:
        print(f"| {r['layer']:<8} | {r['lr']:>13.3g} | {r['moved']:>19.4f} |")


def main(argv: list[str] | None = None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few steps, one seed (for tests)")
    parser.add_argument("--shots", type=int, default=5, help="labeled images per class of 5-9")
    parser.add_argument("--seeds", type=int, default=None)
    args = parser.parse_args(argv)
    seeds = args.seeds or (1 if args.quick else 3)
    steps = 10 if args.quick else 200
    start = time.perf_counter()
    rows, layer_rows, implementation = run(args.shots, seeds, steps, pretrain_epochs=3 if args.quick else 20)
    print(f"pretrained on digits 0-4; fine-tuned on {args.shots} images per class of 5-9, {seeds} draws; "
          f"{steps} steps per stage; L2-SP alpha={L2SP_ALPHA}, beta={L2SP_BETA} via {implementation}")
    print_tables(rows, layer_rows)
    print(f"elapsed {time.perf_counter() - start:.0f} s")
    return rows, layer_rows


if __name__ == "__main__":
    main()
