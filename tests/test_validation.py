"""Bad input raises TypeError/ValueError naming the argument (and the tensor
index), and leaves every array (params, grads, every slot) and the iteration
count exactly as they were."""

from __future__ import annotations

import math

import numpy as np
import pytest

import fusedopt
import fusedopt.ops as F
from registry import CASE_IDS, CASES, assert_same_bits, copies, grad_sequence

# Small shapes per kind; tests poke at index 1 and 2 (for Muon: an Adam-handled
# 1-D param and a Muon-handled 2-D param).
SHAPES = {
    "elementwise": [(5,), (3, 4), (6,)],
    "adafactor": [(5,), (3, 4), (2, 3, 4)],
    "muon": [(3, 4), (5,), (4, 3)],
}


def shared_buffer_params(shapes, dtype):
    """Params as adjacent, non-overlapping views of one buffer (allowed), so
    that tests can build views that overlap two of them."""
    sizes = [int(np.prod(s)) for s in shapes]
    buf = np.random.default_rng(0).standard_normal(sum(sizes)).astype(dtype)
    offsets = np.cumsum([0] + sizes)
    return buf, [buf[o:o + n].reshape(s) for o, n, s in zip(offsets, sizes, shapes)], offsets


class Snapshot:
    """Bit copies of every array an optimizer call can touch."""

    def __init__(self, opt, *more_arrays):
        self.opt = opt
        self.iterations = opt.iterations
        self.extra = opt.state_dict()["extra"]
        self.arrays = [(a, a.copy()) for a in self._arrays(opt, more_arrays)]

    @staticmethod
    def _arrays(opt, more):
        out = list(opt.params)
        for slot in opt.slots.values():
            out += [a for a in slot if a is not None]
        for m in more:
            if isinstance(m, np.ndarray):
                out.append(m)
            elif isinstance(m, (list, tuple)):
                out += [a for a in m if isinstance(a, np.ndarray)]
        return out

    def assert_unchanged(self):
        assert self.opt.iterations == self.iterations
        assert self.opt.state_dict()["extra"] == self.extra
        for i, (live, saved) in enumerate(self.arrays):
            assert_same_bits(live, saved, f"array #{i} changed by a rejected call")


def rejected(opt, exc, match, call, *more_arrays):
    snap = Snapshot(opt, *more_arrays)
    with pytest.raises(exc, match=match):
        call()
    snap.assert_unchanged()


def trained(case, dtype=np.float32, shared=False):
    """An optimizer after two good steps (non-trivial slots) and a good grad
    list (and, with `shared`, the one buffer its params are views of)."""
    shapes = SHAPES[case.kind]
    buf = None
    if shared:
        buf, params, _ = shared_buffer_params(shapes, dtype)
    else:
        params = [np.random.default_rng(1).standard_normal(s).astype(dtype) for s in shapes]
    opt = case.make(params)
    steps = grad_sequence(shapes, dtype, 2, steps=3)
    for g in steps[:2]:
        opt.step(g)
    return (opt, steps[2], buf) if shared else (opt, steps[2])


def _with(grads, i, value):
    out = list(grads)
    out[i] = value
    return out


def non_contiguous_like(a):
    big = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), a.dtype)
    view = big[..., ::2]
    view[...] = a
    assert view.shape == a.shape and not view.flags.c_contiguous
    return view


BAD_GRADS = {
    # name: (exception, message regex with {i}, grads -> bad grads)
    "float16": (TypeError, r"grads\[{i}\].*float16", lambda g, i: _with(g, i, g[i].astype(np.float16))),
    "int32": (TypeError, r"grads\[{i}\].*int32", lambda g, i: _with(g, i, g[i].astype(np.int32))),
    "float64-for-float32": (TypeError, r"grads\[{i}\].*float64",
                            lambda g, i: _with(g, i, g[i].astype(np.float64))),
    "extra-dim": (ValueError, r"grads\[{i}\].*shape", lambda g, i: _with(g, i, g[i][..., None])),
    "same-size-other-shape": (ValueError, r"grads\[{i}\].*shape",
                              lambda g, i: _with(g, i, g[i].reshape(1, -1))),
    "non-contiguous": (ValueError, r"grads\[{i}\].*contiguous",
                       lambda g, i: _with(g, i, non_contiguous_like(g[i]))),
    "string": (TypeError, r"grads\[{i}\]", lambda g, i: _with(g, i, "not an array")),
    "none": (TypeError, r"grads\[{i}\]", lambda g, i: _with(g, i, None)),
    "python-list": (TypeError, r"grads\[{i}\]", lambda g, i: _with(g, i, g[i].tolist())),
    "too-few": (ValueError, r"grads", lambda g, i: g[:-1]),
    "too-many": (ValueError, r"grads", lambda g, i: g + [g[0].copy()]),
}


@pytest.mark.parametrize("index", [1, 2])
@pytest.mark.parametrize("bad", list(BAD_GRADS))
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_bad_grads_are_rejected_and_change_nothing(case, bad, index):
    opt, grads = trained(case)
    exc, match, make_bad = BAD_GRADS[bad]
    bad_grads = make_bad(grads, index)
    rejected(opt, exc, match.format(i=index), lambda: opt.step(bad_grads), bad_grads)
    opt.step(grads)  # and the optimizer still works
    assert opt.iterations == 3


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_fortran_order_grad_is_rejected(case):
    opt, grads = trained(case)
    i = 1 if case.kind != "muon" else 2  # a (3, 4) / (4, 3) matrix
    bad = _with(grads, i, np.asfortranarray(grads[i]))
    assert not bad[i].flags.c_contiguous
    rejected(opt, ValueError, rf"grads\[{i}\].*contiguous", lambda: opt.step(bad), bad)


@pytest.mark.parametrize("grads", ["array", "string", "none", "dict", "generator", "int"])
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_grads_must_be_a_list(case, grads):
    opt, good = trained(case)
    bad = {"array": good[0], "string": "grads", "none": None, "dict": {0: good[0]},
           "generator": (g for g in good), "int": 3}[grads]
    rejected(opt, TypeError, r"grads", lambda: opt.step(bad), good)


@pytest.mark.parametrize("index", [1, 2])
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_grad_aliasing_is_rejected(case, index):
    opt, grads, buf = trained(case, shared=True)
    # The grad is the param itself.
    bad = _with(grads, index, opt.params[index])
    rejected(opt, ValueError, rf"shares memory.*\[{index}\]|\[{index}\].*shares memory",
             lambda: opt.step(bad), bad)
    # The grad overlaps the end of the previous param and the start of this one.
    assert all(np.shares_memory(p, buf) for p in opt.params)
    start = sum(p.size for p in opt.params[:index]) - 1
    overlapping = buf[start:start + opt.params[index].size].reshape(opt.params[index].shape)
    bad = _with(grads, index, overlapping)
    rejected(opt, ValueError, r"shares memory", lambda: opt.step(bad), bad)
    # The grad is one of this param's slot arrays.
    for name, arrays in opt.slots.items():
        slot = arrays[index]
        if slot is not None and slot.shape == opt.params[index].shape:
            bad = _with(grads, index, slot)
            rejected(opt, ValueError, rf"shares memory.*\[{index}\]|\[{index}\].*shares memory",
                     lambda: opt.step(bad), bad)
    opt.step(grads)
    assert opt.iterations == 3


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_params_aliasing_each_other_are_rejected(case):
    """(Muon: (3, 4) params take the Muon branch, the (5,) one the Adam branch.)"""
    shapes = [(3, 4), (5,), (3, 4)]
    grads = grad_sequence(shapes, np.float32, 3, steps=1)[0]
    # The same array twice.
    a, b = np.ones((3, 4), np.float32), np.ones(5, np.float32)
    opt = case.make([a, b, a])
    rejected(opt, ValueError, r"params\[[02]\] shares memory with params\[[02]\]",
             lambda: opt.step(grads), grads)
    # Overlapping views of one buffer (each contiguous and of the right
    # shape): params[k + 1] starts on the last element of params[k].
    for k in (0, 1):
        sizes = [12, 5, 12]
        starts = [0, 12, 17]
        starts[k + 1] -= 1
        starts[2] -= 1 if k == 0 else 0
        buf = np.ones(30, np.float32)
        views = [buf[o:o + n].reshape(s) for o, n, s in zip(starts, sizes, shapes)]
        assert np.shares_memory(views[k], views[k + 1])
        opt = case.make(views)
        rejected(opt, ValueError, rf"params\[[{k}{k + 1}]\] shares memory with params\[[{k}{k + 1}]\]",
                 lambda: opt.step(grads), grads)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_read_only_param_is_rejected_read_only_grad_is_fine(case):
    opt, grads = trained(case)
    twin_params = copies(opt.params)
    twin = case.make(twin_params)
    twin.load_state_dict(opt.state_dict())
    opt.params[1].flags.writeable = False
    try:
        rejected(opt, ValueError, r"params\[1\].*read-only", lambda: opt.step(grads), grads)
    finally:
        opt.params[1].flags.writeable = True
    # Grads are only read: read-only grads are accepted and give the same bits.
    read_only = [g.copy() for g in grads]
    for g in read_only:
        g.flags.writeable = False
    opt.step(read_only)
    twin.step(grads)
    for a, b in zip(opt.params, twin.params):
        assert_same_bits(a, b, "read-only grads")


@pytest.mark.parametrize("value", [-0.1, math.nan, math.inf, -math.inf, "0.1", None, [0.1]],
                         ids=["negative", "nan", "inf", "-inf", "string", "none", "list"])
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_bad_learning_rate_schedule_value_is_rejected_at_step(case, value):
    opt, grads = trained(case)
    opt.learning_rate = lambda step: value
    exc = ValueError if isinstance(value, float) else TypeError
    rejected(opt, exc, r"learning_rate", lambda: opt.step(grads), grads)


@pytest.mark.parametrize("value", [-0.1, math.nan, math.inf, "0.1", None],
                         ids=["negative", "nan", "inf", "string", "none"])
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_bad_learning_rate_is_rejected(case, value):
    exc = ValueError if isinstance(value, float) else TypeError
    p = [np.ones(s, np.float32) for s in SHAPES[case.kind]]
    with pytest.raises(exc, match="learning_rate"):
        case.make(p, learning_rate=value)
    opt, grads = trained(case)
    lr = opt.learning_rate

    def assign():
        opt.learning_rate = value

    rejected(opt, exc, "learning_rate", assign, grads)
    assert opt.learning_rate == lr


# (optimizer, kwargs, exception, message regex)
BAD_CONSTRUCTOR_ARGS = [
    (fusedopt.SGD, {"momentum": 1.5}, ValueError, "momentum"),
    (fusedopt.SGD, {"momentum": -0.1}, ValueError, "momentum"),
    (fusedopt.SGD, {"momentum": 0.9, "nesterov": True, "dampened": True}, ValueError, "dampened"),
    (fusedopt.SGD, {"momentum": 1.0, "dampened": True}, ValueError, "momentum"),
    (fusedopt.SGD, {"momentum": "0.9"}, TypeError, "momentum"),
    (fusedopt.RMSprop, {"rho": 1.0}, ValueError, "rho"),
    (fusedopt.RMSprop, {"momentum": 1.0}, ValueError, "momentum"),
    (fusedopt.RMSprop, {"epsilon": math.nan}, ValueError, "epsilon"),
    (fusedopt.Adagrad, {"initial_accumulator_value": -1.0}, ValueError, "initial_accumulator_value"),
    (fusedopt.Adagrad, {"epsilon": -1e-7}, ValueError, "epsilon"),
    (fusedopt.Adadelta, {"rho": -0.1}, ValueError, "rho"),
    (fusedopt.Adam, {"beta_1": 1.0}, ValueError, "beta_1"),
    (fusedopt.Adam, {"beta_1": -0.5}, ValueError, "beta_1"),
    (fusedopt.Adam, {"beta_2": 1.5}, ValueError, "beta_2"),
    (fusedopt.Adam, {"beta_2": math.nan}, ValueError, "beta_2"),
    (fusedopt.Adam, {"epsilon": math.nan}, ValueError, "epsilon"),
    (fusedopt.Adam, {"epsilon": math.inf}, ValueError, "epsilon"),
    (fusedopt.Adam, {"epsilon": None}, TypeError, "epsilon"),
    (fusedopt.Adam, {"weight_decay": -0.1}, ValueError, "weight_decay"),
    (fusedopt.Adam, {"weight_decay": math.nan}, ValueError, "weight_decay"),
    (fusedopt.Adam, {"weight_decay": "0.1"}, TypeError, "weight_decay"),
    (fusedopt.Adam, {"clipnorm": 0.0}, ValueError, "clipnorm"),
    (fusedopt.Adam, {"clipvalue": -1.0}, ValueError, "clipvalue"),
    (fusedopt.Adam, {"global_clipnorm": math.inf}, ValueError, "global_clipnorm"),
    (fusedopt.Adam, {"clipnorm": 1.0, "global_clipnorm": 1.0}, ValueError, "clipnorm"),
    (fusedopt.AdamW, {"weight_decay": -1.0}, ValueError, "weight_decay"),
    (fusedopt.Adamax, {"beta_2": 1.0}, ValueError, "beta_2"),
    (fusedopt.Nadam, {"beta_1": 1.0}, ValueError, "beta_1"),
    (fusedopt.Ftrl, {"learning_rate_power": 0.5}, ValueError, "learning_rate_power"),
    (fusedopt.Ftrl, {"l1_regularization_strength": -1.0}, ValueError, "l1_regularization_strength"),
    (fusedopt.Ftrl, {"l2_regularization_strength": -1.0}, ValueError, "l2_regularization_strength"),
    (fusedopt.Ftrl, {"l2_shrinkage_regularization_strength": -1.0}, ValueError,
     "l2_shrinkage_regularization_strength"),
    (fusedopt.Ftrl, {"beta": -1.0}, ValueError, "beta"),
    (fusedopt.Ftrl, {"initial_accumulator_value": -0.1}, ValueError, "initial_accumulator_value"),
    (fusedopt.Lion, {"beta_1": 0.0}, ValueError, "beta_1"),
    (fusedopt.Lion, {"beta_1": 1.1}, ValueError, "beta_1"),
    (fusedopt.Lion, {"beta_2": 1.0}, ValueError, "beta_2"),
    (fusedopt.Lamb, {"beta_1": 1.0}, ValueError, "beta_1"),
    (fusedopt.Adafactor, {"beta_2_decay": 0.5}, ValueError, "beta_2_decay"),
    (fusedopt.Adafactor, {"epsilon_1": -1.0}, ValueError, "epsilon_1"),
    (fusedopt.Adafactor, {"epsilon_2": math.nan}, ValueError, "epsilon_2"),
    (fusedopt.Adafactor, {"clip_threshold": 0.0}, ValueError, "clip_threshold"),
    (fusedopt.ScheduleFreeAdamW, {"beta_1": 0.0}, ValueError, "beta_1"),
    (fusedopt.ScheduleFreeAdamW, {"beta_2": 1.0}, ValueError, "beta_2"),
    (fusedopt.ScheduleFreeAdamW, {"warmup_steps": -1}, ValueError, "warmup_steps"),
    (fusedopt.Muon, {"momentum": 1.0}, ValueError, "momentum"),
    (fusedopt.Muon, {"adam_beta_1": 1.0}, ValueError, "adam_beta_1"),
    (fusedopt.Muon, {"adam_beta_2": -0.1}, ValueError, "adam_beta_2"),
    (fusedopt.Muon, {"adam_weight_decay": -0.1}, ValueError, "adam_weight_decay"),
    (fusedopt.Muon, {"adam_lr_ratio": 0.0}, ValueError, "adam_lr_ratio"),
    (fusedopt.Muon, {"ns_steps": -1}, ValueError, "ns_steps"),
    (fusedopt.Muon, {"rms_rate": math.nan}, ValueError, "rms_rate"),
    (fusedopt.Muon, {"muon_a": math.inf}, ValueError, "muon_a"),
    (fusedopt.Muon, {"use_adam": [True]}, ValueError, "use_adam"),
    (fusedopt.Muon, {"use_adam": [False, False]}, ValueError, r"use_adam\[1\]"),
]


@pytest.mark.parametrize("cls, kwargs, exc, match", BAD_CONSTRUCTOR_ARGS,
                         ids=[f"{c.__name__}-{'-'.join(k)}-{i}" for i, (c, k, _, _) in
                              enumerate(BAD_CONSTRUCTOR_ARGS)])
def test_bad_constructor_arguments(cls, kwargs, exc, match):
    params = [np.ones((3, 4), np.float32), np.ones(5, np.float32)]
    before = copies(params)
    with pytest.raises(exc, match=match):
        cls(params, **kwargs)
    for a, b in zip(params, before):
        assert_same_bits(a, b, "params")


BAD_PARAMS = {
    "array": (TypeError, r"params", lambda: np.ones(3, np.float32)),
    "string": (TypeError, r"params", lambda: "params"),
    "none": (TypeError, r"params", lambda: None),
    "floats": (TypeError, r"params\[0\]", lambda: [1.0, 2.0]),
    "nested-list": (TypeError, r"params\[0\]", lambda: [[1.0, 2.0]]),
    "none-entry": (TypeError, r"params\[1\]", lambda: [np.ones(3, np.float32), None]),
    "float16": (TypeError, r"params\[1\].*float16", lambda: [np.ones(3, np.float32), np.ones(3, np.float16)]),
    "int32": (TypeError, r"params\[0\].*int32", lambda: [np.ones(3, np.int32)]),
    "mixed-float": (TypeError, r"params\[1\].*float64", lambda: [np.ones(3, np.float32), np.ones(3)]),
    "non-contiguous": (ValueError, r"params\[1\].*contiguous",
                       lambda: [np.ones(3, np.float32), np.ones(8, np.float32)[::2]]),
    "fortran": (ValueError, r"params\[0\].*contiguous", lambda: [np.asfortranarray(np.ones((3, 4), np.float32))]),
    "read-only": (ValueError, r"params\[0\].*read-only", lambda: [np.ones(4, np.float32)]),
}


@pytest.mark.parametrize("bad", list(BAD_PARAMS))
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_bad_params_are_rejected_by_the_constructor(case, bad):
    exc, match, make = BAD_PARAMS[bad]
    params = make()
    if bad == "read-only":
        params[0].flags.writeable = False
    with pytest.raises(exc, match=match):
        case.make(params)


# -- the functional kernels --------------------------------------------------------

def kernel_args(rule, dtype=np.float32):
    """Valid (params, grads, states, hyper) for `rule`: three tensors."""
    shapes = [(5,), (3, 4), (2, 3, 4)]
    rng = np.random.default_rng(4)
    params = [rng.standard_normal(s).astype(dtype) for s in shapes]
    grads = [rng.standard_normal(s).astype(dtype) for s in shapes]
    states = []
    for k, _ in enumerate(F.RULES[rule]["states"]):
        if rule == "adafactor" and k < 2:
            states.append([np.zeros(() if len(s) < 2 else (s[:-1] if k == 0 else s[:-2] + s[-1:]), dtype)
                           for s in shapes])
        else:
            states.append([np.abs(rng.standard_normal(s)).astype(dtype) for s in shapes])
    hyper = {"u_product": 0.5} if rule == "nadam" else {}
    return params, grads, states, hyper


def kernel_rejects(rule, exc, match, params, grads, states, hyper=None, **kw):
    kernel = getattr(F, f"{rule}_")
    arrays = []
    for group in [params, grads] + list(states):
        if isinstance(group, np.ndarray):
            arrays.append(group)
        elif isinstance(group, (list, tuple)):
            arrays += [a for a in group if isinstance(a, np.ndarray)]
    saved = [a.copy() for a in arrays]
    args = {"learning_rate": 0.01, "step": 1, **(hyper or {}), **kw}
    with pytest.raises(exc, match=match):
        kernel(params, grads, *states, **args)
    for a, b in zip(arrays, saved):
        assert_same_bits(a, b, f"{rule}_: array changed by a rejected call")


RULE_NAMES = list(F.RULES)


@pytest.mark.parametrize("rule", RULE_NAMES)
def test_kernel_rejects_bad_arrays(rule):
    params, grads, states, hyper = kernel_args(rule)
    kernel_rejects(rule, TypeError, r"params\[1\].*float64", _with(params, 1, params[1].astype(np.float64)),
                   grads, states, hyper)
    kernel_rejects(rule, TypeError, r"params\[0\].*int32", _with(params, 0, params[0].astype(np.int32)),
                   grads, states, hyper)
    kernel_rejects(rule, TypeError, r"grads\[2\].*float16", params,
                   _with(grads, 2, grads[2].astype(np.float16)), states, hyper)
    kernel_rejects(rule, ValueError, r"grads\[1\].*shape", params, _with(grads, 1, grads[1].T.copy()),
                   states, hyper)
    kernel_rejects(rule, ValueError, r"grads\[1\].*contiguous", params,
                   _with(grads, 1, non_contiguous_like(grads[1])), states, hyper)
    kernel_rejects(rule, ValueError, r"params\[2\].*contiguous",
                   _with(params, 2, non_contiguous_like(params[2])), grads, states, hyper)
    kernel_rejects(rule, ValueError, r"grads", params, grads[:2], states, hyper)
    kernel_rejects(rule, TypeError, r"params", params[0], grads, states, hyper)
    kernel_rejects(rule, TypeError, r"grads", params, "grads", states, hyper)
    kernel_rejects(rule, TypeError, r"grads\[0\]", params, _with(grads, 0, None), states, hyper)
    # Aliasing: a grad is a param; two params are one array; a param overlaps another.
    kernel_rejects(rule, ValueError, r"shares memory", params, _with(grads, 1, params[1]), states, hyper)
    kernel_rejects(rule, ValueError, r"shares memory", _with(params, 0, params[2].reshape(-1)[:5]),
                   grads, states, hyper)
    ro = params[1].copy()
    ro.flags.writeable = False
    kernel_rejects(rule, ValueError, r"params\[1\].*read-only", _with(params, 1, ro), grads, states, hyper)
    kernel_rejects(rule, ValueError, r"learning_rate", params, grads, states, hyper, learning_rate=-0.1)
    kernel_rejects(rule, ValueError, r"learning_rate", params, grads, states, hyper, learning_rate=math.nan)
    kernel_rejects(rule, TypeError, r"learning_rate", params, grads, states, hyper, learning_rate="0.1")
    kernel_rejects(rule, TypeError, r"learning_rate", params, grads, states, hyper, learning_rate=None)
    kernel_rejects(rule, ValueError, r"weight_decay", params, grads, states, hyper, weight_decay=-1.0)
    kernel_rejects(rule, ValueError, r"weight_decay", params, grads, states, hyper, weight_decay=math.inf)
    kernel_rejects(rule, ValueError, r"step", params, grads, states, hyper, step=0)
    kernel_rejects(rule, ValueError, r"unknown hyperparameter 'bogus'", params, grads, states, hyper, bogus=1.0)
    # Read-only grads are fine.
    ro_grads = [g.copy() for g in grads]
    for g in ro_grads:
        g.flags.writeable = False
    getattr(F, f"{rule}_")(params, ro_grads, *states, learning_rate=0.01, step=1, **hyper)


@pytest.mark.parametrize("rule", [r for r in RULE_NAMES if F.RULES[r]["states"]])
def test_kernel_rejects_bad_states(rule):
    params, grads, states, hyper = kernel_args(rule)
    names = F.RULES[rule]["states"]
    k = len(names) - 1  # the last state: full-shaped for every rule
    name = names[k]
    bad = [list(s) for s in states]
    bad[k][1] = bad[k][1].astype(np.float64)
    kernel_rejects(rule, TypeError, rf"{name}\[1\].*float64", params, grads, bad, hyper)
    bad = [list(s) for s in states]
    bad[k][2] = np.zeros(bad[k][2].size, np.float32)
    kernel_rejects(rule, ValueError, rf"{name}\[2\].*shape", params, grads, bad, hyper)
    bad = [list(s) for s in states]
    bad[k][1] = non_contiguous_like(bad[k][1])
    kernel_rejects(rule, ValueError, rf"{name}\[1\].*contiguous", params, grads, bad, hyper)
    bad = [list(s) for s in states]
    bad[k][1] = bad[k][1].copy()
    bad[k][1].flags.writeable = False
    kernel_rejects(rule, ValueError, rf"{name}\[1\].*read-only", params, grads, bad, hyper)
    bad = [list(s) for s in states]
    bad[k] = bad[k][:2]
    kernel_rejects(rule, ValueError, rf"{name}", params, grads, bad, hyper)
    bad = [list(s) for s in states]
    bad[k][0] = params[0]  # a state is a param
    kernel_rejects(rule, ValueError, r"shares memory", params, grads, bad, hyper)
    bad = [list(s) for s in states]
    bad[k][2] = grads[2]  # a state is a grad
    kernel_rejects(rule, ValueError, r"shares memory", params, grads, bad, hyper)
    if len(names) > 1 and rule != "adafactor":
        bad = [list(s) for s in states]
        bad[0][1] = bad[k][1]  # two states are one array
        kernel_rejects(rule, ValueError, r"shares memory", params, grads, bad, hyper)
    with pytest.raises(TypeError, match=f"{rule}_ takes {len(names)} state"):
        getattr(F, f"{rule}_")(params, grads, *states[:-1], learning_rate=0.01)


KERNEL_BAD_HYPER = [
    ("adam", {"beta_1": 1.0}, ValueError, "beta_1"),
    ("adam", {"beta_2": -0.1}, ValueError, "beta_2"),
    ("adam", {"epsilon": math.nan}, ValueError, "epsilon"),
    ("adam", {"epsilon": "1e-7"}, TypeError, "epsilon"),
    ("adam", {"beta_1": None}, TypeError, "beta_1"),
    ("adam_amsgrad", {"beta_2": 1.0}, ValueError, "beta_2"),
    ("sgd_momentum", {"momentum": 1.5}, ValueError, "momentum"),
    ("sgd_dampened", {"momentum": 1.0}, ValueError, "momentum"),
    ("rmsprop", {"rho": 1.0}, ValueError, "rho"),
    ("rmsprop_momentum", {"momentum": math.inf}, ValueError, "momentum"),
    ("adagrad", {"epsilon": -1.0}, ValueError, "epsilon"),
    ("adadelta", {"rho": 2.0}, ValueError, "rho"),
    ("adamax", {"beta_1": 1.0}, ValueError, "beta_1"),
    ("nadam", {"u_product": 1.0}, ValueError, "u_product"),
    ("nadam", {"u_product": math.nan}, ValueError, "u_product"),
    ("ftrl", {"learning_rate_power": 0.1}, ValueError, "learning_rate_power"),
    ("ftrl", {"beta": -1.0}, ValueError, "beta"),
    ("ftrl", {"learning_rate": 0.0}, ValueError, "learning_rate"),
    ("lion", {"beta_1": 0.0}, ValueError, "beta_1"),
    ("lamb", {"epsilon": -1.0}, ValueError, "epsilon"),
    ("adafactor", {"clip_threshold": 0.0}, ValueError, "clip_threshold"),
    ("adafactor", {"beta_2_decay": 0.1}, ValueError, "beta_2_decay"),
    ("schedule_free_adamw", {"beta_1": 0.0}, ValueError, "beta_1"),
    ("schedule_free_adamw", {"warmup_steps": -1}, ValueError, "warmup_steps"),
    ("muon_momentum", {"momentum": 1.0}, ValueError, "momentum"),
    ("muon_momentum", {"nesterov": 0.5}, ValueError, "nesterov"),
]


@pytest.mark.parametrize("rule, hyper, exc, match", KERNEL_BAD_HYPER,
                         ids=[f"{r}-{'-'.join(h)}-{i}" for i, (r, h, _, _) in enumerate(KERNEL_BAD_HYPER)])
def test_kernel_rejects_bad_hyperparameters(rule, hyper, exc, match):
    params, grads, states, base = kernel_args(rule)
    kernel_rejects(rule, exc, match, params, grads, states, {**base, **hyper})


def test_adafactor_kernel_checks_factored_state_shapes():
    params, grads, states, hyper = kernel_args("adafactor")
    bad = [list(s) for s in states]
    bad[0][1] = np.zeros(4, np.float32)  # r of a (3, 4) param must be (3,)
    kernel_rejects("adafactor", ValueError, r"r\[1\].*shape", params, grads, bad, hyper)
    bad = [list(s) for s in states]
    bad[1][2] = np.zeros((2, 3), np.float32)  # c of a (2, 3, 4) param must be (2, 4)
    kernel_rejects("adafactor", ValueError, r"c\[2\].*shape", params, grads, bad, hyper)
    bad = [list(s) for s in states]
    bad[0][0] = np.zeros(5, np.float32)  # rank 1: a 0-d placeholder
    kernel_rejects("adafactor", ValueError, r"r\[0\].*shape", params, grads, bad, hyper)


def test_muon_validates_the_whole_list_with_the_callers_indices():
    """Regression: Muon validated each group (Adam params, Muon params) on its
    own sub-list, and never saw its Muon params as outputs.

    So a grad that *was* a 2-D param, two params that were one array, or a 2-D
    param overlapping a 1-D one passed silently (the param was updated twice or
    from its own memory), and errors named the index within the group
    (grads[0] for the caller's grads[1]). The generic tests only ran single-
    group optimizers through these checks before Muon joined the registry.
    """
    w = np.ones((3, 4), np.float32)
    b = np.ones(5, np.float32)
    opt = fusedopt.Muon([w, b])
    g = [np.ones((3, 4), np.float32), np.ones(5, np.float32)]
    rejected(opt, ValueError, r"grads\[0\] shares memory with params\[0\]|params\[0\].*grads\[0\]",
             lambda: opt.step([w, g[1]]), g)
    rejected(opt, TypeError, r"grads\[1\] has dtype float16", lambda: opt.step([g[0], g[1].astype(np.float16)]), g)
    opt = fusedopt.Muon([w, w.reshape(-1)[:5]])
    rejected(opt, ValueError, r"shares memory", lambda: opt.step(g), g)
    opt = fusedopt.Muon([w, w])
    rejected(opt, ValueError, r"shares memory", lambda: opt.step([g[0], g[0].copy()]), g)


def test_schedule_returning_a_non_number_names_learning_rate():
    """Regression: a learning-rate schedule returning None or a list raised
    float()'s own TypeError (no argument named), and one returning the string
    "0.1" was silently accepted as 0.1: the value went through float() before
    the number check."""
    opt = fusedopt.Adam([np.ones(3, np.float32)])
    grads = [np.ones(3, np.float32)]
    for value in (None, "0.1", [0.1], np.ones(2)):
        opt.learning_rate = lambda step, value=value: value
        rejected(opt, TypeError, r"learning_rate must be a number", lambda: opt.step(grads), grads)
    opt.learning_rate = lambda step: np.float32(0.5)  # NumPy scalars are numbers
    assert opt.learning_rate == 0.5


def test_kernel_hyperparameter_none_is_a_type_error():
    """Regression: fusedopt.ops took an explicit `beta_1=None` for a missing
    hyperparameter ("needs ... (no default)") instead of a wrong type."""
    params, grads, states, hyper = kernel_args("adam")
    kernel_rejects("adam", TypeError, r"beta_1 must be a number", params, grads, states, {"beta_1": None})


@pytest.mark.parametrize("clip", [{"clipnorm": 0.5}, {"clipvalue": 0.1}, {"global_clipnorm": 0.5}],
                         ids=lambda d: next(iter(d)))
@pytest.mark.parametrize("bad", ["non-contiguous", "python-list", "float64-for-float32", "extra-dim"])
@pytest.mark.parametrize("case", [c for c in CASES if c.id in ("adam-wd", "lamb", "muon", "adafactor")],
                         ids=lambda c: c.id)
def test_clipping_validates_grads_before_copying_them(case, bad, clip):
    """Clipping works on copies of the grads; a copy would turn a Python list
    or a strided view into a valid array, so validation must come first."""
    shapes = SHAPES[case.kind]
    params = [np.random.default_rng(1).standard_normal(s).astype(np.float32) for s in shapes]
    opt = case.make(params, **clip)
    grads = grad_sequence(shapes, np.float32, 2, steps=1)[0]
    exc, match, make_bad = BAD_GRADS[bad]
    bad_grads = make_bad(grads, 1)
    rejected(opt, exc, match.format(i=1), lambda: opt.step(bad_grads), bad_grads)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_clipvalue_keeps_a_0d_grad_an_array(dtype):
    """Regression (found by tests/fuzz/fuzz_numpy.py): clipvalue clipped with
    np.clip, which turns a 0-d array into a NumPy scalar, so the engine
    rejected the clipped grad of a 0-d parameter ("grads[0] must be a
    numpy.ndarray ..., got float32"). The validation tests clip only 1-D and
    2-D grads."""
    w = np.array(1.0, dtype)
    opt = fusedopt.SGD([w], learning_rate=0.5, clipvalue=0.25)
    opt.step([np.array(3.0, dtype)])
    assert w.shape == () and w == dtype(1.0 - 0.5 * 0.25)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_misaligned_param_is_rejected_by_the_constructor(case):
    """Regression (found by tests/fuzz/fuzz_numpy.py): the constructor checked
    dtype, contiguity and writability but not alignment, so a float32 view at
    an odd byte offset of a buffer was accepted (undefined behaviour in the
    engine). BAD_PARAMS had no misaligned array."""
    shapes = SHAPES[case.kind]
    params = [np.ones(s, np.float32) for s in shapes]
    n = int(np.prod(shapes[1]))
    params[1] = np.ndarray(shapes[1], np.float32, buffer=bytearray(4 * n + 5), offset=1)
    params[1][...] = 1.0
    assert not params[1].flags.aligned
    before = copies(params)
    with pytest.raises(ValueError, match=r"params\[1\] is not aligned"):
        case.make(params)
    for a, b in zip(params, before):
        assert_same_bits(a, b, "params")


@pytest.mark.parametrize("value", [10**400, -(10**400)], ids=["huge", "-huge"])
def test_int_too_large_for_a_double_is_a_value_error(value):
    """Regression (found by tests/fuzz/fuzz_numpy.py): float() of such an int
    raises OverflowError, which escaped the optimizers' argument checks
    (neither TypeError nor ValueError, and naming no argument)."""
    params = [np.ones(3, np.float32)]
    for kwargs, name in [({"learning_rate": value}, "learning_rate"), ({"beta_1": value}, "beta_1"),
                         ({"weight_decay": value}, "weight_decay")]:
        with pytest.raises(ValueError, match=f"{name} must be finite"):
            fusedopt.Adam(params, **kwargs)
    opt = fusedopt.Adam(params)
    with pytest.raises(ValueError, match="learning_rate must be finite"):
        opt.learning_rate = value
