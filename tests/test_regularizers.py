"""Regularizers (fusedopt.regularizers) against their formulas, and the fused
l1= / l2= / proximal_l1= of every optimizer and functional kernel against a
NumPy reference after each of >= 7 steps. The comparisons with Keras and
TensorFlow are in test_regularizers_tf.py."""

from __future__ import annotations

import zlib

import numpy as np
import pytest

import fusedopt
import fusedopt.regularizers as R
from reference import Reference
from registry import (
    CASE_IDS,
    CASES,
    DTYPES,
    PARALLEL_SHAPES,
    assert_lists_close,
    assert_same_bits,
    assert_states_same_bits,
    copies,
    grad_sequence,
    make_arrays,
    shapes_for,
)

SHAPES = [(1,), (7,), (1031,), (33, 31), (4097,), (3, 70_001)]  # the last spans chunks


def seed_of(*parts) -> int:
    return zlib.crc32("/".join(map(str, parts)).encode())


def weights(shape, dtype=np.float32, seed=0) -> np.ndarray:
    """Normal weights with exact zeros (sign(0) = 0) and a few tiny values."""
    w = np.random.default_rng(seed).standard_normal(shape).astype(dtype)
    w.flat[::7] = 0
    w.flat[3::11] *= dtype(1e-4)
    return w


def test_penalty_of_a_list_is_the_sum_and_gradients_come_per_array():
    ws = [weights(s, seed=i) for i, s in enumerate([(5,), (3, 4), (1031,)])]
    total = R.l1l2_penalty(ws, 0.01, 0.02)
    assert total == pytest.approx(sum(R.l1l2_penalty(w, 0.01, 0.02) for w in ws), rel=1e-15)
    grads = R.l1l2_gradient(ws, 0.01, 0.02)
    assert isinstance(grads, list) and len(grads) == 3
    for w, g in zip(ws, grads):
        assert_same_bits(g, R.l1l2_gradient(w, 0.01, 0.02), "list vs single")
    out = [np.full_like(w, np.nan) for w in ws]
    result = R.l1l2_gradient(ws, 0.01, 0.02, out=out)
    assert all(r is o for r, o in zip(result, out))  # written in place, no copies
    for a, b in zip(out, grads):
        assert_same_bits(a, b, "out=")
    assert R.l1l2_penalty([], 0.1, 0.1) == 0.0


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_penalty_and_gradient_match_the_formula_in_double(dtype, shape):
    w = weights(shape, dtype, seed=seed_of("formula", shape))
    w64 = w.astype(np.float64)
    l1, l2 = 0.013, 0.021
    expected = l1 * np.sum(np.abs(w64)) + l2 * np.sum(w64 * w64)
    assert R.l1l2_penalty(w, l1, l2) == pytest.approx(expected, rel=1e-13)
    g = R.l1l2_gradient(w, l1, l2)
    assert g.dtype == dtype
    np.testing.assert_allclose(g, l1 * np.sign(w64) + 2 * l2 * w64,
                               rtol=1e-6 if dtype == np.float32 else 1e-15, atol=1e-12)


def test_penalty_does_not_depend_on_the_thread_count():
    """Per-chunk partial sums are combined in order: the same double for 1 and 2 threads."""
    ws = [weights((300_001,), seed=5), weights((70_001,), seed=6)]
    w0 = [weights((300_001,), seed=7), None]
    fusedopt.set_num_threads(1)
    one = (R.l1l2_penalty(ws, 0.01, 0.02), R.l2sp_penalty(ws, w0, 0.1, 0.2))
    fusedopt.set_num_threads(2)
    two = (R.l1l2_penalty(ws, 0.01, 0.02), R.l2sp_penalty(ws, w0, 0.1, 0.2))
    assert one == two


# -- the proximal step ----------------------------------------------------------

@pytest.mark.parametrize("lr,l1,l2", [(0.1, 0.5, 0.0), (0.1, 0.5, 0.3), (0.05, 0.0, 0.2),
                                      (0.5, 2.0, 0.1)])
@pytest.mark.parametrize("shape", [(7,), (1031,), (3, 70_001)], ids=str)
def test_proximal_step_matches_its_formula(shape, lr, l1, l2):
    """float32 across chunks: sign(v) max(|v| - lr l1, 0) / (1 + lr l2), v = w - lr g."""
    w = weights(shape, seed=seed_of("prox", shape))
    g = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    v = w.astype(np.float64) - lr * g.astype(np.float64)
    expected = np.sign(v) * np.maximum(np.abs(v) - lr * l1, 0) / (1 + lr * l2)
    ours = w.copy()
    R.proximal_step_(ours, g, lr, l1, l2)
    np.testing.assert_allclose(ours, expected, rtol=1e-6, atol=1e-7)
    if l1 > 0:
        assert np.count_nonzero(ours == 0) > 0.05 * ours.size
    assert np.all(ours[expected == 0] == 0)


def test_proximal_step_on_lists_and_float64():
    ws = [weights((9,), np.float64, seed=1), weights((4, 5), np.float64, seed=2)]
    gs = [np.full_like(w, 0.25) for w in ws]
    expected = []
    for w, g in zip(ws, gs):
        v = w - 0.1 * g
        expected.append(np.sign(v) * np.maximum(np.abs(v) - 0.1 * 0.4, 0) / (1 + 0.1 * 0.2))
    R.proximal_step_(ws, gs, 0.1, 0.4, 0.2)
    for w, e in zip(ws, expected):
        np.testing.assert_allclose(w, e, rtol=1e-15, atol=0)
        np.testing.assert_array_equal(w == 0, e == 0)


# -- L2-SP ---------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_l2sp_matches_its_formula(dtype):
    """alpha/2 ||w - w0||^2 + beta/2 ||w_new||^2; gradients alpha (w - w0) and beta w."""
    w = [weights((1031,), dtype, 1), weights((3, 70_001), dtype, 2), weights((5,), dtype, 3)]
    w0 = [weights((1031,), dtype, 4), weights((3, 70_001), dtype, 5), None]  # the last is new
    alpha, beta = 0.1, 0.03
    d = [a.astype(np.float64) - b.astype(np.float64) for a, b in zip(w[:2], w0[:2])]
    expected = alpha / 2 * sum(np.sum(x * x) for x in d) + beta / 2 * np.sum(w[2].astype(np.float64) ** 2)
    assert R.l2sp_penalty(w, w0, alpha, beta) == pytest.approx(expected, rel=1e-13)
    grads = R.l2sp_gradient(w, w0, alpha, beta)
    rtol = 1e-6 if dtype == np.float32 else 1e-15
    for g, x in zip(grads, d):
        np.testing.assert_allclose(g, alpha * x, rtol=rtol, atol=1e-12)
    np.testing.assert_allclose(grads[2], beta * w[2].astype(np.float64), rtol=rtol, atol=0)
    # Single arrays: w0=None is a new weight.
    assert R.l2sp_penalty(w[2], None, alpha, beta) == pytest.approx(
        beta / 2 * np.sum(w[2].astype(np.float64) ** 2), rel=1e-13)
    assert_same_bits(R.l2sp_gradient(w[0], w0[0], alpha), grads[0], "single vs list")


# -- validation: bad input raises and changes nothing --------------------------

def test_bad_input_raises_and_leaves_arrays_untouched():
    w = weights((10,), seed=1)
    g = np.ones(10, np.float32)
    out = np.full(10, 7.0, np.float32)
    before = [w.copy(), g.copy(), out.copy()]
    cases = [
        (ValueError, "l1", lambda: R.l1l2_gradient(w, -0.1, 0.0, out=out)),
        (ValueError, "l2", lambda: R.l1l2_gradient(w, 0.0, float("nan"), out=out)),
        (TypeError, "l1", lambda: R.l1l2_gradient(w, "0.1", 0.0, out=out)),
        (TypeError, "dtype", lambda: R.l1l2_penalty(np.ones(3, np.int32), 0.1, 0.1)),
        (TypeError, "out\\[0\\] has dtype", lambda: R.l1l2_gradient(w, 0.1, 0.1, out=np.zeros(10))),
        (ValueError, "out\\[0\\] has shape", lambda: R.l1l2_gradient(w, 0.1, 0.1, out=out[:5].copy())),
        (ValueError, "shares memory", lambda: R.l1l2_gradient(w, 0.1, 0.1, out=w)),
        (ValueError, "C-contiguous", lambda: R.l1l2_penalty(np.ones((4, 4), np.float32)[:, 1], 0.1, 0.1)),
        (ValueError, "learning_rate", lambda: R.proximal_step_(w, g, -1.0, 0.1)),
        (ValueError, "shares memory", lambda: R.proximal_step_(w, w, 0.1, 0.1)),
        (ValueError, "g has 2 arrays", lambda: R.proximal_step_([w], [g, g], 0.1, 0.1)),
        (ValueError, "read-only", lambda: R.proximal_step_(np.broadcast_to(w, (10,)), g, 0.1, 0.1)),
        (ValueError, "alpha", lambda: R.l2sp_gradient(w, g, -1.0, out=out)),
        (ValueError, "w0\\[0\\] has shape", lambda: R.l2sp_penalty([w], [g[:3].copy()], 0.1)),
        (TypeError, "w0 must be a list", lambda: R.l2sp_penalty([w], g, 0.1)),
    ]
    for exc, match, call in cases:
        with pytest.raises(exc, match=match):
            call()
        for a, b in zip([w, g, out], before):
            assert_same_bits(a, b, f"after rejected call ({match})")


# -- fused l1 / l2 / proximal_l1 in every update rule --------------------------

REG = {"l1": 2e-3, "l2": 5e-3, "proximal_l1": 3e-3}


def regularized_reference_step(ref: Reference, grads, reg) -> None:
    """Float64: g += l1 sign(p) + 2 l2 p from p before the decay, the rule (with
    its decay), then p = sign(p) max(|p| - lr_p * proximal_l1, 0), where lr_p is
    the rate of p's update (Muon's Adam parameters: lr * adam_lr_ratio)."""
    lr = ref.learning_rate()
    grads = [np.asarray(g, np.float64) + reg["l1"] * np.sign(p) + 2 * reg["l2"] * p
             for g, p in zip(grads, ref.params)]
    ref.step(grads)
    for i, p in enumerate(ref.params):
        rate = lr * ref.h["adam_lr_ratio"] if ref.name == "Muon" and ref.use_adam[i] else lr
        p[...] = np.sign(p) * np.maximum(np.abs(p) - rate * reg["proximal_l1"], 0.0)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_fused_regularization_matches_reference_after_each_step(case, dtype):
    shapes = shapes_for(case, "list")
    seed = seed_of("fused-reg", case.id, np.dtype(dtype).name)
    params = make_arrays(shapes, dtype, np.random.default_rng(seed))
    ref = Reference(case.cls.__name__, case.kwargs, params)
    opt = case.make(params, **REG)
    steps = grad_sequence(shapes, dtype, seed + 1)
    assert len(steps) >= 7
    for t, grads in enumerate(steps, start=1):
        opt.step(grads)
        regularized_reference_step(ref, grads, REG)
        assert_lists_close(params, ref.params, dtype, f"step {t}: params")
        for name in ref.slots:
            assert_lists_close(opt.slots[name], ref.slots[name], dtype, f"step {t}: slots[{name!r}]")


UNFUSED_CASES = [c for c in CASES if c.kind != "muon"]  # Muon rescales its rate per matrix


def unfused_step(opt, grads, reg) -> None:
    """What the fused pass computes, in NumPy around an unregularized step, with
    the same operations in the same order (so the bits must agree)."""
    dt = opt.params[0].dtype.type
    lr = opt.learning_rate
    grads = [g + (dt(reg["l1"]) * np.sign(p) + dt(2.0 * reg["l2"]) * p) for g, p in zip(grads, opt.params)]
    opt.step(grads)
    t = dt(lr * reg["proximal_l1"])
    for p in opt.params:
        p[...] = p - np.clip(p, -t, t)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("case", UNFUSED_CASES, ids=[c.id for c in UNFUSED_CASES])
def test_fused_regularization_equals_the_unfused_computation_bitwise(case, dtype):
    shapes = shapes_for(case, "list")
    seed = seed_of("unfused", case.id)
    params = make_arrays(shapes, dtype, np.random.default_rng(seed))
    # Small weights for the proximal step to zero out.
    for p in params:
        p.flat[::3] *= dtype(1e-4)
    fused = case.make(params, **REG)
    plain = case.make(copies(params))
    for t, grads in enumerate(grad_sequence(shapes, dtype, seed + 1), start=1):
        fused.step(grads)
        unfused_step(plain, grads, REG)
        assert_states_same_bits(fused, plain, f"step {t}")


@pytest.mark.parametrize("case", [c for c in CASES if c.id in
                                  ("sgd-momentum-wd", "adam-wd", "lamb-wd", "adafactor-wd", "muon")],
                         ids=lambda c: c.id)
def test_fused_regularization_does_not_depend_on_the_thread_count(case):
    shapes = PARALLEL_SHAPES[case.kind]
    seed = seed_of("threads-reg", case.id)
    runs = []
    for threads in (1, 2):
        fusedopt.set_num_threads(threads)
        opt = case.make(make_arrays(shapes, np.float32, np.random.default_rng(seed)), **REG)
        for grads in grad_sequence(shapes, np.float32, seed + 1, steps=3):
            opt.step(grads)
        runs.append(opt)
    assert_states_same_bits(runs[0], runs[1], "1 vs 2 threads")


def test_zero_regularization_is_the_plain_update_and_config_lists_only_what_is_used():
    shapes = [(1031,), (4, 8)]
    params = make_arrays(shapes, np.float32, np.random.default_rng(0))
    a = fusedopt.Adam(copies(params), weight_decay=0.01)
    b = fusedopt.Adam(copies(params), weight_decay=0.01, l1=0.0, l2=0.0, proximal_l1=0.0)
    for grads in grad_sequence(shapes, np.float32, 1):
        a.step(grads)
        b.step(grads)
    assert_states_same_bits(a, b, "explicit zeros")
    assert not {"l1", "l2", "proximal_l1"} & set(a.get_config())
    config = fusedopt.Adam(copies(params), l2=0.01).get_config()
    assert config["l2"] == 0.01 and "l1" not in config


def test_functional_kernel_takes_the_same_regularization_as_the_optimizer():
    shapes = [(70_001,), (3, 5)]
    params = make_arrays(shapes, np.float32, np.random.default_rng(2))
    opt = fusedopt.Adam(copies(params), learning_rate=0.01, weight_decay=0.02, **REG)
    p = copies(params)
    m = [np.zeros_like(x) for x in p]
    v = [np.zeros_like(x) for x in p]
    for t, grads in enumerate(grad_sequence(shapes, np.float32, 3), start=1):
        opt.step(grads)
        fusedopt.ops.adam_(p, grads, m, v, learning_rate=0.01, step=t, weight_decay=0.02, **REG)
    for a, b in zip(p, opt.params):
        assert_same_bits(a, b, "ops.adam_ vs Adam")


@pytest.mark.parametrize("kwargs,exc,match", [
    ({"l1": -1e-3}, ValueError, "l1 must be >= 0"),
    ({"l2": float("inf")}, ValueError, "l2 must be finite"),
    ({"proximal_l1": "0.1"}, TypeError, "proximal_l1 must be a number"),
])
def test_bad_regularization_is_rejected_and_changes_nothing(kwargs, exc, match):
    p = [np.ones(5, np.float32)]
    g = [np.full(5, 0.5, np.float32)]
    m, v = [np.zeros(5, np.float32)], [np.zeros(5, np.float32)]
    with pytest.raises(exc, match=match):
        fusedopt.ops.adam_(p, g, m, v, learning_rate=0.1, **kwargs)
    assert np.all(p[0] == 1) and np.all(m[0] == 0) and np.all(v[0] == 0)
    with pytest.raises(exc, match=match):
        fusedopt.SGD(p, **kwargs)
