"""The examples in examples/ in their --quick form, with assertions on what they print."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from types import ModuleType

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_update_rules(capsys):
    results = load("update_rules").main(["--quick"])
    out = capsys.readouterr().out
    assert "| gradient descent |" in out and "| Adam" in out
    assert set(results) == {"gradient descent", "momentum 0.9", "Nesterov 0.9", "SGD", "Adagrad", "RMSprop", "Adam"}
    for name, r in results.items():
        excess = r["excess"]
        assert excess[100] < 0.1 * excess[0], name  # every rule makes progress
        assert excess[10] < excess[0], name
    gd = results["gradient descent"]["excess"][100]
    assert results["momentum 0.9"]["excess"][100] < 0.1 * gd  # acceleration on an ill-conditioned problem
    assert results["Nesterov 0.9"]["excess"][100] < 0.1 * gd


def test_keras_regularized(capsys):
    rows = load("keras_regularized").main(["--quick"])
    out = capsys.readouterr().out
    assert "| test acc |" in out and "keras.regularizers" in out
    assert [(r["optimizer"], r["impl"]) for r in rows] == [("Adam", "fusedopt"), ("Adam", "keras")]
    for r in rows:
        assert r["last_loss"] < r["first_loss"], r
        assert r["accuracy"] > 0.7, r
        assert r["optimizer_class"].startswith("fusedopt." if r["impl"] == "fusedopt" else "keras."), r
    for fused, builtin in zip(rows[::2], rows[1::2]):  # same init, same batches, same numerics
        assert fused["last_loss"] == pytest.approx(builtin["last_loss"], rel=2e-2)
        assert abs(fused["accuracy"] - builtin["accuracy"]) <= 0.03


def test_distillation(capsys):
    rows = load("distillation").main(["--quick"])
    out = capsys.readouterr().out
    assert "offline distillation (cached logits)" in out
    by_name = {r["training"]: r for r in rows}
    assert by_name["hard labels"]["acc"][0] > 0.6  # the teacher
    for name in ("from scratch (hard labels)", "online distillation", "offline distillation (cached logits)"):
        first, last = by_name[name]["losses"][0]
        assert last < first, name
        assert 0.0 <= by_name[name]["acc"][0] <= 1.0


def test_transfer_learning(capsys):
    rows, layer_rows = load("transfer_learning").main(["--quick"])
    out = capsys.readouterr().out
    assert "per-layer rates + L2-SP" in out
    assert [r["setup"] for r in rows] == ["from scratch", "frozen base, new head", "fine-tuned, one rate",
                                          "fine-tuned, per-layer rates + L2-SP"]
    for r in rows:
        assert 0.0 <= r["acc"][0] <= 1.0
    rates = [r["lr"] for r in layer_rows]
    assert rates == sorted(rates) and rates[0] < rates[-1]  # smaller toward the input
    assert all(r["moved"] > 0 for r in layer_rows)
    assert np.isfinite([r["moved"] for r in layer_rows]).all()
