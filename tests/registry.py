"""The one registry of (optimizer, kwargs) cases that drives every generic test,
the one dtype -> (atol, rtol) table, and the shapes each test runs on.

Every NumPy optimizer and every variant is here, and every rule has at least
one case with a non-zero weight decay.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

import fusedopt


FUSEDOPT_ONLY_KWARGS = ("dampened", "use_adam", "x_from_new_z")


@dataclass(frozen=True)
class Case:
    id: str
    cls: type
    kwargs: dict = field(default_factory=dict)
    # Which shapes the rule needs: "elementwise" (any), "adafactor" (ranks 1,
    # 2 and 3, factored for rank >= 2) or "muon" (2-D Muon params mixed with
    # Adam-handled params of other ranks).
    kind: str = "elementwise"
    # keras.optimizers.<cls.__name__> takes the same kwargs (False: no twin).
    keras: bool = True

    @property
    def keras_kwargs(self) -> dict:
        """The kwargs without fusedopt-only arguments (Keras would reject them)."""
        return {k: v for k, v in self.kwargs.items() if k not in FUSEDOPT_ONLY_KWARGS}

    def make(self, params, **overrides):
        return self.cls(params, **{**self.kwargs, **overrides})

    def __repr__(self) -> str:
        return self.id


CASES = [
    Case("sgd", fusedopt.SGD, {"learning_rate": 0.05}),
    Case("sgd-wd", fusedopt.SGD, {"learning_rate": 0.05, "weight_decay": 0.1}),
    Case("sgd-momentum", fusedopt.SGD, {"learning_rate": 0.05, "momentum": 0.9}),
    Case("sgd-momentum-wd", fusedopt.SGD, {"learning_rate": 0.05, "momentum": 0.8, "weight_decay": 0.05}),
    Case("sgd-nesterov-wd", fusedopt.SGD,
         {"learning_rate": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 0.02}),
    Case("sgd-dampened-wd", fusedopt.SGD,
         {"learning_rate": 0.05, "momentum": 0.8, "dampened": True, "weight_decay": 0.03}, keras=False),
    Case("rmsprop", fusedopt.RMSprop, {"learning_rate": 0.01}),
    Case("rmsprop-wd", fusedopt.RMSprop, {"learning_rate": 0.01, "rho": 0.8, "weight_decay": 0.05}),
    Case("rmsprop-centered-wd", fusedopt.RMSprop,
         {"learning_rate": 0.01, "centered": True, "epsilon": 1e-6, "weight_decay": 0.03}),
    Case("rmsprop-momentum-wd", fusedopt.RMSprop,
         {"learning_rate": 0.01, "momentum": 0.8, "weight_decay": 0.01}),
    Case("rmsprop-centered-momentum-wd", fusedopt.RMSprop,
         {"learning_rate": 0.01, "rho": 0.85, "momentum": 0.5, "centered": True, "weight_decay": 0.02}),
    Case("adagrad", fusedopt.Adagrad, {"learning_rate": 0.05}),
    Case("adagrad-wd", fusedopt.Adagrad,
         {"learning_rate": 0.05, "initial_accumulator_value": 0.2, "epsilon": 1e-6, "weight_decay": 0.01}),
    Case("adadelta", fusedopt.Adadelta, {"learning_rate": 0.5}),
    Case("adadelta-wd", fusedopt.Adadelta, {"learning_rate": 1.0, "rho": 0.9, "weight_decay": 0.01}),
    Case("adam", fusedopt.Adam, {"learning_rate": 0.01}),
    Case("adam-wd", fusedopt.Adam,
         {"learning_rate": 0.01, "beta_1": 0.8, "beta_2": 0.95, "epsilon": 1e-6, "weight_decay": 0.01}),
    Case("adam-amsgrad-wd", fusedopt.Adam,
         {"learning_rate": 0.01, "beta_2": 0.9, "amsgrad": True, "weight_decay": 0.02}),
    Case("adamw", fusedopt.AdamW, {"learning_rate": 0.01}),
    Case("adamw-amsgrad", fusedopt.AdamW, {"learning_rate": 0.01, "weight_decay": 0.05, "amsgrad": True}),
    Case("adamax", fusedopt.Adamax, {"learning_rate": 0.01}),
    Case("adamax-wd", fusedopt.Adamax, {"learning_rate": 0.01, "beta_2": 0.9, "weight_decay": 0.01}),
    Case("nadam", fusedopt.Nadam, {"learning_rate": 0.01}),
    Case("nadam-wd", fusedopt.Nadam, {"learning_rate": 0.01, "beta_1": 0.85, "weight_decay": 0.01}),
    Case("ftrl", fusedopt.Ftrl, {"learning_rate": 0.1}),
    Case("ftrl-regularized-wd", fusedopt.Ftrl, {
        "learning_rate": 0.1, "learning_rate_power": -0.7, "initial_accumulator_value": 0.2,
        "l1_regularization_strength": 0.01, "l2_regularization_strength": 0.02,
        "l2_shrinkage_regularization_strength": 0.03, "beta": 0.1, "weight_decay": 0.01}),
    Case("lion", fusedopt.Lion, {"learning_rate": 0.001}),
    Case("lion-wd", fusedopt.Lion, {"learning_rate": 0.001, "beta_1": 0.95, "beta_2": 0.98, "weight_decay": 0.1}),
    Case("lamb", fusedopt.Lamb, {"learning_rate": 0.01}),
    Case("lamb-wd", fusedopt.Lamb, {"learning_rate": 0.01, "beta_1": 0.8, "weight_decay": 0.01}),
    Case("adafactor", fusedopt.Adafactor, {"learning_rate": 0.01}, kind="adafactor"),
    # lr > 1/sqrt(t) from t = 5 on: exercises rho_t = min(lr, 1/sqrt(t)).
    Case("adafactor-wd", fusedopt.Adafactor,
         {"learning_rate": 0.45, "clip_threshold": 0.5, "beta_2_decay": -0.6, "epsilon_2": 1e-2,
          "weight_decay": 0.01}, kind="adafactor"),
    # The default follows the paper (and Keras on JAX); x_from_new_z=True is
    # what keras.optimizers.ScheduleFreeAdamW computes on TensorFlow.
    Case("schedule-free-adamw", fusedopt.ScheduleFreeAdamW, {"learning_rate": 0.01}, keras=False),
    Case("schedule-free-adamw-warmup-wd", fusedopt.ScheduleFreeAdamW,
         {"learning_rate": 0.01, "beta_1": 0.8, "warmup_steps": 3, "weight_decay": 0.01}, keras=False),
    Case("schedule-free-adamw-tf", fusedopt.ScheduleFreeAdamW,
         {"learning_rate": 0.01, "x_from_new_z": True}),
    Case("schedule-free-adamw-tf-warmup-wd", fusedopt.ScheduleFreeAdamW,
         {"learning_rate": 0.01, "beta_1": 0.8, "warmup_steps": 3, "weight_decay": 0.01,
          "x_from_new_z": True}),
    # Muon's defaults already decay (weight_decay = adam_weight_decay = 0.004).
    Case("muon", fusedopt.Muon, {"learning_rate": 0.01}, kind="muon"),
    Case("muon-plain-momentum-wd", fusedopt.Muon, {
        "learning_rate": 0.02, "momentum": 0.9, "nesterov": False, "weight_decay": 0.05,
        "adam_weight_decay": 0.02, "adam_lr_ratio": 0.5, "adam_beta_1": 0.8}, kind="muon"),
    Case("muon-no-rms-rate", fusedopt.Muon,
         {"learning_rate": 0.01, "rms_rate": None, "ns_steps": 3, "weight_decay": 0.1}, kind="muon"),
]



def _registry_cases() -> list[Case]:
    """A default case and a weight-decay case for every NumPy optimizer the list
    above lacks (fusedopt.optimizers.__all__), so that a new rule runs through
    every generic test from its first commit. No Keras twin is assumed."""
    covered = {c.cls for c in CASES}
    out = []
    for name in fusedopt.optimizers.__all__:
        cls = getattr(fusedopt.optimizers, name)
        if cls is fusedopt.Optimizer or cls in covered:
            continue
        rule = name.lower()
        out.append(Case(rule, cls, {"learning_rate": 0.01}, keras=False))
        out.append(Case(f"{rule}-wd", cls, {"learning_rate": 0.01, "weight_decay": 0.02}, keras=False))
    return out


CASES += _registry_cases()
CASE_IDS = [c.id for c in CASES]
KERAS_CASES = [c for c in CASES if c.keras]

# One place for tolerances, by dtype: (atol, rtol), for
#     |actual - expected| <= atol * scale + rtol * |expected|
# where scale = max(1, max |expected|) over the compared list of tensors (a
# parameter list or one slot's list): a slot that sums terms of that size
# (Ftrl's `linear`, momenta) can cancel to small values and keeps absolute,
# not relative, precision. float32 stores and computes in
# float32 (eps 1.2e-7): 7 steps of a dozen rounded operations stay inside
# 1e-5 relative. float64 differs from the reference only by operation order.
TOLERANCES = {
    np.dtype(np.float32): (1e-6, 1e-5),
    np.dtype(np.float64): (1e-14, 1e-12),
}

DTYPES = [np.float32, np.float64]
NUM_STEPS = 7
SIZES = [1, 7, 32, 1024, 4097]
# The same total sizes as 2-D shapes, for rules that need matrices.
MATRIX_OF_SIZE = {1: (1, 1), 7: (7, 1), 32: (4, 8), 1024: (32, 32), 4097: (17, 241)}

LAYOUTS = [f"one-{n}" for n in SIZES] + ["list", "tiny1000"]

_LIST_SHAPES = {
    "elementwise": [(1,), (7,), (4, 8), (32, 32), (17, 241), (2, 3, 5)],
    "adafactor": [(7,), (1, 1), (4, 8), (2, 3, 5), (32, 32), (17, 241), (4, 8, 32), (4097,), (1,)],
    "muon": [(4, 8), (7,), (32, 32), (1,), (17, 241), (1, 1), (7, 1), (2, 3, 5)],
}
_TINY_CYCLE = {
    "elementwise": [(1,), (2,), (3,), (4,), (5,)],
    "adafactor": [(1,), (2,), (1, 1), (2, 3), (3, 1), (1, 2, 2), (2, 1, 3)],
    "muon": [(1, 2), (3,), (2, 2), (1,), (3, 1)],
}


def shapes_for(case: Case, layout: str) -> list[tuple[int, ...]]:
    if layout.startswith("one-"):
        n = int(layout[4:])
        return [(n,)] if case.kind == "elementwise" else [MATRIX_OF_SIZE[n]]
    if layout == "list":
        return list(_LIST_SHAPES[case.kind])
    if layout == "tiny1000":
        cycle = _TINY_CYCLE[case.kind]
        return [cycle[i % len(cycle)] for i in range(1000)]
    raise ValueError(layout)


# Small shapes for the Keras comparisons (Keras runs eagerly, per variable).
KERAS_SHAPES = {
    "elementwise": [(7,), (4, 8)],
    "adafactor": [(7,), (4, 8), (2, 3, 5)],
    "muon": [(4, 8), (7,), (8, 4)],
}

# Large enough for several 65536-element chunks and above the 32768-element
# parallel threshold; "many" groups a thousand small tensors into tasks.
PARALLEL_SHAPES = {
    "elementwise": [(150_001,), (257, 263), (5,), (3, 7)],
    "adafactor": [(300, 501), (3, 40, 601), (70_001,), (5,), (2, 3)],
    # Muon: wide and tall matrices of > 65536 elements whose Gram matrices
    # stay small (Newton-Schulz is NumPy matmul, not what is under test here).
    "muon": [(40, 2000), (70_001,), (2, 3, 5), (1700, 40)],
}
MANY_SHAPES = {
    "elementwise": [(50,)] * 1000,
    "adafactor": [(5, 10)] * 500 + [(50,)] * 500,
    "muon": [(5, 10)] * 500 + [(50,)] * 500,
}


def make_arrays(shapes, dtype, rng: np.random.Generator) -> list[np.ndarray]:
    return [rng.standard_normal(s).astype(dtype) for s in shapes]


def grad_sequence(shapes, dtype, seed: int, steps: int = NUM_STEPS) -> list[list[np.ndarray]]:
    """`steps` lists of random gradients from a seeded generator."""
    rng = np.random.default_rng(seed)
    return [make_arrays(shapes, dtype, rng) for _ in range(steps)]


def copies(arrays):
    return [None if a is None else np.array(a, copy=True) for a in arrays]


def slot_copies(slots: dict) -> dict:
    return {k: copies(v) for k, v in slots.items()}


def _scale(expected) -> float:
    e = np.asarray(expected, np.float64)
    return max(1.0, float(np.max(np.abs(e)))) if e.size else 1.0


def assert_close(actual, expected, dtype, what: str, scale: float | None = None) -> None:
    atol, rtol = TOLERANCES[np.dtype(dtype)]
    scale = _scale(expected) if scale is None else scale
    np.testing.assert_allclose(np.asarray(actual, np.float64), np.asarray(expected, np.float64),
                               atol=atol * scale, rtol=rtol, err_msg=what)


def assert_same_bits(a, b, what: str) -> None:
    """Bitwise equality (NaN-safe, dtype and shape included)."""
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype and a.shape == b.shape, f"{what}: {a.dtype}{a.shape} vs {b.dtype}{b.shape}"
    assert a.tobytes() == b.tobytes(), f"{what}: not bitwise equal (max |diff| " \
        f"{np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))})"


def assert_states_same_bits(opt_a, opt_b, what: str) -> None:
    for i, (pa, pb) in enumerate(zip(opt_a.params, opt_b.params)):
        assert_same_bits(pa, pb, f"{what}: params[{i}]")
    assert list(opt_a.slots) == list(opt_b.slots)
    for name in opt_a.slots:
        for i, (sa, sb) in enumerate(zip(opt_a.slots[name], opt_b.slots[name])):
            assert (sa is None) == (sb is None)
            if sa is not None:
                assert_same_bits(sa, sb, f"{what}: slots[{name!r}][{i}]")


def run(case: Case, params, grad_steps, **overrides) -> Any:
    opt = case.make(params, **overrides)
    for grads in grad_steps:
        opt.step(grads)
    return opt


def _flat(arrays) -> np.ndarray:
    arrays = [np.asarray(a, np.float64).ravel() for a in arrays if a is not None]
    return np.concatenate(arrays) if arrays else np.zeros(0)


def assert_lists_close(actual, expected, dtype, what: str) -> None:
    """Every array of `actual` is close to the same-index array of `expected`
    (one vectorized check; on failure, the first offending index is named)."""
    assert len(actual) == len(expected), what
    for i, (a, e) in enumerate(zip(actual, expected)):
        assert (a is None) == (e is None), f"{what}[{i}]: None mismatch"
        if a is not None:
            assert np.shape(a) == np.shape(e), f"{what}[{i}]: shape {np.shape(a)} vs {np.shape(e)}"
    atol, rtol = TOLERANCES[np.dtype(dtype)]
    a, e = _flat(actual), _flat(expected)
    scale = _scale(e)
    if np.all(np.abs(a - e) <= atol * scale + rtol * np.abs(e)):
        return
    for i, (ai, ei) in enumerate(zip(actual, expected)):
        if ai is not None:
            assert_close(ai, ei, dtype, f"{what}[{i}]", scale=scale)
    raise AssertionError(what)  # pragma: no cover - the loop above raises
