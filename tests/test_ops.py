"""The functional kernels `fusedopt.ops.<rule>_` against the optimizers (bitwise:
same engine, caller-owned state) and against the float64 reference."""

from __future__ import annotations

import inspect
import zlib

import numpy as np
import pytest

import fusedopt
import fusedopt.ops as F
from reference import KERAS_DEFAULTS, Reference
from registry import (
    CASES,
    DTYPES,
    assert_lists_close,
    assert_same_bits,
    copies,
    grad_sequence,
    make_arrays,
    shapes_for,
)

OPS_CASES = [c for c in CASES if c.kind != "muon"]


def ops_spec(case):
    """The (rule, hyperparameters) that the case's optimizer runs, written out
    from the optimizer's documented arguments."""
    name = case.cls.__name__
    h = {**KERAS_DEFAULTS[name], **case.kwargs}
    pick = lambda *keys: {k: h[k] for k in keys}  # noqa: E731
    if name == "SGD":
        if h["momentum"] == 0:
            return "sgd", {}
        variant = "dampened" if h["dampened"] else "nesterov" if h["nesterov"] else "momentum"
        return f"sgd_{variant}", pick("momentum")
    if name == "RMSprop":
        rule = "rmsprop" + ("_centered" if h["centered"] else "") + ("_momentum" if h["momentum"] > 0 else "")
        return rule, pick("rho", "momentum", "epsilon")
    if name in ("Adam", "AdamW"):
        return ("adam_amsgrad" if h["amsgrad"] else "adam"), pick("beta_1", "beta_2", "epsilon")
    table = {
        "Adagrad": ("adagrad", ("epsilon",)),
        "Adadelta": ("adadelta", ("rho", "epsilon")),
        "Adamax": ("adamax", ("beta_1", "beta_2", "epsilon")),
        "Nadam": ("nadam", ("beta_1", "beta_2", "epsilon")),
        "Ftrl": ("ftrl", ("learning_rate_power", "l1_regularization_strength",
                          "l2_regularization_strength", "l2_shrinkage_regularization_strength", "beta")),
        "Lion": ("lion", ("beta_1", "beta_2")),
        "Lamb": ("lamb", ("beta_1", "beta_2", "epsilon")),
        "Adafactor": ("adafactor", ("beta_2_decay", "epsilon_1", "epsilon_2", "clip_threshold")),
        "ScheduleFreeAdamW": ("schedule_free_adamw",
                              ("beta_1", "beta_2", "epsilon", "warmup_steps", "x_from_new_z")),
    }
    if name not in table:  # a rule added since (one class, one rule): its arguments by the registry's names
        rule = case.cls._rule
        return rule, pick(*F.RULES[rule]["hyper"])
    rule, keys = table[name]
    return rule, pick(*keys)


def test_every_rule_has_a_kernel_and_a_case():
    assert set(F.RULES) == {ops_spec(c)[0] for c in OPS_CASES} | {"muon_momentum"}
    for rule, info in F.RULES.items():
        kernel = getattr(F, f"{rule}_")
        assert f"{rule}_" in F.__all__
        params = list(inspect.signature(kernel).parameters)
        assert params[:2] == ["params", "grads"]
        assert len(params) >= 2 + len(info["states"])
        for hyper in info["hyper"]:
            assert hyper in params, (rule, hyper)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("case", OPS_CASES, ids=lambda c: c.id)
def test_kernel_matches_optimizer_bitwise_and_reference(case, dtype):
    rule, hyper = ops_spec(case)
    kernel = getattr(F, f"{rule}_")
    shapes = shapes_for(case, "list")
    seed = zlib.crc32(f"ops/{case.id}".encode())
    start = make_arrays(shapes, dtype, np.random.default_rng(seed))
    ref = Reference(case.cls.__name__, case.kwargs, start)
    opt_params = copies(start)
    opt = case.make(opt_params)
    params = copies(start)
    # The caller owns the state: the same initial values the optimizer builds.
    states = [[s.astype(dtype) for s in ref.slots[name]] for name in F.RULES[rule]["states"]]
    assert F.RULES[rule]["states"] == list(opt.slots)
    lr = case.kwargs.get("learning_rate", KERAS_DEFAULTS[case.cls.__name__]["learning_rate"])
    wd = case.kwargs.get("weight_decay", KERAS_DEFAULTS[case.cls.__name__].get("weight_decay")) or 0.0
    u_product = 1.0
    for t, grads in enumerate(grad_sequence(shapes, dtype, seed + 1), start=1):
        extra = {}
        if rule == "nadam":
            u_product *= hyper["beta_1"] * (1 - 0.5 * 0.96 ** t)
            extra["u_product"] = u_product
        kernel(params, grads, *states, learning_rate=lr, step=t, weight_decay=wd, **hyper, **extra)
        opt.step(grads)
        ref.step(grads)
        for i, (p, q) in enumerate(zip(params, opt_params)):
            assert_same_bits(p, q, f"step {t}: params[{i}]")
        for name, state in zip(F.RULES[rule]["states"], states):
            for i, (s, q) in enumerate(zip(state, opt.slots[name])):
                assert_same_bits(s, q, f"step {t}: {name}[{i}]")
        assert_lists_close(params, ref.params, dtype, f"step {t}: params vs reference")
        for name, state in zip(F.RULES[rule]["states"], states):
            assert_lists_close(state, ref.slots[name], dtype, f"step {t}: {name} vs reference")


@pytest.mark.parametrize("nesterov", [True, False])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_muon_momentum_kernel_matches_keras_formula(nesterov, dtype):
    """m <- m + (g + m (mu - 1)); the direction (written to `params`) is
    g + mu m (nesterov) or m; weight decay does not apply to a direction buffer."""
    rng = np.random.default_rng(3)
    shapes = [(4, 8), (17, 241), (1, 1)]
    m = make_arrays(shapes, dtype, rng)
    d = [np.zeros(s, dtype) for s in shapes]
    m_ref = [x.astype(np.float64) for x in m]
    for t, grads in enumerate(grad_sequence(shapes, dtype, 4), start=1):
        F.muon_momentum_(d, grads, m, learning_rate=0.1, step=t, momentum=0.9, nesterov=nesterov)
        for i, g in enumerate(grads):
            g = g.astype(np.float64)
            m_ref[i] = m_ref[i] + (g + m_ref[i] * (0.9 - 1))
            expected = g + 0.9 * m_ref[i] if nesterov else m_ref[i]
            assert_lists_close([d[i]], [expected], dtype, f"step {t}: direction[{i}]")
        assert_lists_close(m, m_ref, dtype, f"step {t}: momentum")


def test_defaults_are_keras_defaults():
    """A kernel called without hyperparameters runs Keras's defaults."""
    rng = np.random.default_rng(0)
    p0 = make_arrays([(33,), (5, 3)], np.float32, rng)
    grads = grad_sequence([(33,), (5, 3)], np.float32, 1, steps=3)
    params, m, v = copies(p0), [np.zeros_like(x) for x in p0], [np.zeros_like(x) for x in p0]
    opt_params = copies(p0)
    opt = fusedopt.Adam(opt_params, learning_rate=0.01)
    for t, g in enumerate(grads, start=1):
        F.adam_(params, g, m, v, learning_rate=0.01, step=t)
        opt.step(g)
    for a, b in zip(params, opt_params):
        assert_same_bits(a, b, "params")


def test_generic_apply_and_dry_run():
    rng = np.random.default_rng(1)
    p0 = make_arrays([(40,), (3, 4)], np.float64, rng)
    g = make_arrays([(40,), (3, 4)], np.float64, rng)
    a, b = copies(p0), copies(p0)
    ma, mb = [np.zeros_like(x) for x in p0], [np.zeros_like(x) for x in p0]
    F.lion_(a, g, ma, learning_rate=0.01, step=2, weight_decay=0.1, beta_1=0.8)
    F.apply("lion", b, g, [mb], learning_rate=0.01, step=2, weight_decay=0.1, hyper={"beta_1": 0.8})
    for x, y in zip(a + ma, b + mb):
        assert_same_bits(x, y, "apply vs lion_")
    assert not np.array_equal(a[0], p0[0])
    before = copies(b + mb)
    F.apply("lion", b, g, [mb], learning_rate=0.01, step=3, dry_run=True)
    for x, y in zip(b + mb, before):
        assert_same_bits(x, y, "dry_run wrote")
    with pytest.raises(ValueError, match="unknown rule"):
        F.apply("adamm", b, g, [mb], learning_rate=0.01)
    with pytest.raises(ValueError, match="u_product"):
        F.nadam_(b, g, mb, copies(mb), learning_rate=0.01)
    with pytest.raises(TypeError, match="lion_ takes 1 state"):
        F.lion_(b, g, learning_rate=0.01)
