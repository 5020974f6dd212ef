"""Fuzzing the C API (cpp/include/fusedopt/c_api.h, libfusedopt_engine.so
next to fusedopt/_core*.so) through ctypes.

Written against the C API that validates its arguments: every function
returns an int status (0: done, negative: refused, nothing written) and
``const char* fusedopt_last_error(void)`` gives the message of the last
refusal. It needs that API: against a libfusedopt_engine without
fusedopt_last_error (the void-returning functions, which take their
arguments as already validated) this module skips itself, and
tests/test_fuzz.py says so.

Property: a call either returns 0 and its outputs equal the float64
reference (kernel_reference.py; the regularizer formulas; the NumPy Philox
masks of fuzz_regularizers_dropout.py), with nothing written outside its
outputs; or it returns a negative status with a non-empty message and every
buffer unchanged. Never a crash. Faults: bad rule or dtype ids, negative
counts and sizes, NULL pointers where data is needed, misaligned pointers,
outputs overlapping other buffers, inconsistent Adafactor views,
non-finite or out-of-range scalars and hyperparameters, bad shapes, noise
shapes and rates.
"""

from __future__ import annotations

import ctypes
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import event, given, note
from hypothesis import strategies as st

import fusedopt
import fusedopt.ops as F
from fuzz_numpy import (
    FLOAT_DTYPES,
    KERNEL_DEFAULTS,
    VALID_HYPER,
    VALID_HYPER_FOR,
    assert_call_matches,
    assert_matches,
    initial_states,
    kernel_hyper_range,
    nudged,
)
from fuzz_regularizers_dropout import keep_mask
from fuzzlib import (
    FTRL_LEARNING_RATES,
    VALUE_KINDS,
    Memory,
    address,
    describe,
    failure,
    float_in,
    fuzz_settings,
    mostly,
    quiet,
    random_values,
    shapes,
    trace,
)
from kernel_reference import KernelReference

LIBRARY = Path(fusedopt.__file__).resolve().parent / "libfusedopt_engine.so"
LIB = ctypes.CDLL(str(LIBRARY))
if not hasattr(LIB, "fusedopt_last_error"):
    pytest.skip("needs the C API that returns a status per call (fusedopt_last_error); "
                f"{LIBRARY.name} has the void-returning one", allow_module_level=True)

FLOAT32, FLOAT64 = 0, 1
i32, i64, u64, dbl, vp = ctypes.c_int, ctypes.c_int64, ctypes.c_uint64, ctypes.c_double, ctypes.c_void_p


class Tensor(ctypes.Structure):
    """fusedopt_tensor."""
    _fields_ = [("param", vp), ("grad", vp), ("state", vp * 4), ("size", i64),
                ("batch", i64), ("rows", i64), ("cols", i64), ("factored", ctypes.c_int32)]


def _declare(name, restype, *argtypes):
    fn = getattr(LIB, name)
    fn.restype, fn.argtypes = restype, list(argtypes)
    return fn


rule_id = _declare("fusedopt_rule_id", i32, ctypes.c_char_p)
rule_num_states = _declare("fusedopt_rule_num_states", i32, i32)
rule_num_hyper = _declare("fusedopt_rule_num_hyper", i32, i32)
last_error = _declare("fusedopt_last_error", ctypes.c_char_p)
apply_regularized = _declare("fusedopt_apply_regularized", i32, i32, i32, ctypes.POINTER(Tensor), i64,
                             ctypes.POINTER(dbl), i64, dbl, dbl, dbl, dbl, dbl)
apply_plain = _declare("fusedopt_apply", i32, i32, i32, ctypes.POINTER(Tensor), i64, ctypes.POINTER(dbl), i64,
                       dbl, dbl)
regularizer_sums = _declare("fusedopt_regularizer_sums", i32, i32, vp, vp, i64, ctypes.POINTER(dbl),
                            ctypes.POINTER(dbl))
l1l2_gradient = _declare("fusedopt_l1l2_gradient", i32, i32, vp, vp, i64, dbl, dbl)
l2sp_gradient = _declare("fusedopt_l2sp_gradient", i32, i32, vp, vp, vp, i64, dbl)
dropout = _declare("fusedopt_dropout", i32, i32, vp, vp, ctypes.POINTER(i64), ctypes.POINTER(i64), i32, dbl, u64,
                   u64, vp, vp)

RULES = sorted(F.RULES)
DTYPE_ID = {np.dtype(np.float32): FLOAT32, np.dtype(np.float64): FLOAT64}


def expect_status(call, fault: str | None, memory: Memory, check) -> None:
    """Run `call` (returns the status). With a fault: a negative status, a
    message, nothing changed; without: 0, only outputs written, `check`."""
    before = memory.snapshot()
    status = call()
    if fault is not None:
        if status == 0:
            raise failure("accepted", fault)(f"fault {fault!r}: status 0")
        if status > 0:
            raise failure("positive status", fault)(f"status {status}")
        message = last_error()
        if not message:
            raise failure("no message", fault)(f"status {status} without fusedopt_last_error()")
        memory.assert_unchanged(before, failure("changed by refused", fault))
        event(f"refused: {fault}")
        return
    if status != 0:
        raise failure("refused valid", "call")(f"status {status}: {last_error()!r}")
    memory.assert_only_outputs_changed(before, failure("wrote outside outputs", "call"))
    check()
    event("valid: compared with the reference")


def ptr(a) -> int | None:
    return None if a is None else address(a)


# -- fusedopt_apply / fusedopt_apply_regularized ------------------------------------------------

APPLY_FAULTS = ["rule", "dtype", "count", "tensors-null", "param-null", "grad-null", "state-null", "size",
                "misaligned", "factored-view", "hyper-null", "hyper-value", "step", "lr", "decay",
                "regularization", "grad-is-param", "state-is-param", "params-overlap"]


@st.composite
def apply_call(draw):
    rule = draw(st.sampled_from(RULES), label="rule")
    dtype = draw(st.sampled_from(FLOAT_DTYPES), label="dtype")
    n = draw(st.sampled_from([1, 2, 3, 0]), label="num_tensors")
    shape_list = [draw(shapes(), label=f"shape[{i}]") for i in range(n)]
    if rule == "adafactor":  # empty matrices: fuzz_numpy.test_adafactor_statistics_of_empty_matrices
        shape_list = [s[:-2] + tuple(max(d, 1) for d in s[-2:]) if len(s) >= 2 else s for s in shape_list]
    hyper = {name: float(draw(VALID_HYPER_FOR.get((rule, name), VALID_HYPER[name]), label=name))
             for name in F.RULES[rule]["hyper"]}
    plan = dict(rule=rule, dtype=dtype, shapes=shape_list, hyper=hyper,
                lr=draw(FTRL_LEARNING_RATES if rule == "ftrl" else float_in(0.0, 1.0, [0.01]), label="lr"),
                step=draw(st.integers(1, 20), label="step"),
                decay=draw(st.one_of(st.just(0.0), float_in(0.0, 0.05)), label="decay"),
                reg=[draw(st.one_of(st.just(0.0), st.just(0.0), float_in(0.0, 0.05))) for _ in range(3)],
                regularized=draw(st.booleans(), label="regularized entry point"),
                values={i: draw(VALUE_KINDS) for i in range(n)}, seed=draw(st.integers(0, 2**32 - 1)),
                fault=draw(mostly(None, APPLY_FAULTS, 20), label="fault"),
                i=draw(st.integers(0, max(0, n - 1))), bad=draw(st.sampled_from([-1.0, math.nan, math.inf, 1.5])))
    return plan


def run_apply(plan: dict) -> None:
    rule, dtype, n = plan["rule"], np.dtype(plan["dtype"]), len(plan["shapes"])
    names = F.RULES[rule]["states"]
    memory = Memory(plan["seed"])
    rng = np.random.default_rng(plan["seed"] + 1)
    p0 = [random_values(rng, s, plan["values"][i]) for i, s in enumerate(plan["shapes"])]
    warm = KernelReference(rule, {**KERNEL_DEFAULTS[rule], "u_product": 0.5, **plan["hyper"]}, p0,
                           initial_states(rule, p0, rng))
    warm.call([rng.standard_normal(s) for s in plan["shapes"]], 0.05, 1, 0.0)
    fault, i, bad = plan["fault"], plan["i"], plan["bad"]
    params = [memory.place(warm.params[k], dtype, "misaligned" if fault == "misaligned" and k == i else "c")
              for k in range(n)]
    grads = [memory.place(random_values(rng, s, "normal"), dtype) for s in plan["shapes"]]
    states = [[memory.place(warm.slots[name][k], dtype) for k in range(n)] for name in names]
    if fault == "params-overlap" and n >= 2 and params[0].size and params[1].size:
        params[1] = params[0].reshape(-1)[: params[1].size].reshape(params[1].shape) \
            if params[0].size >= params[1].size else params[1]
    memory.outputs += params + [s for group in states for s in group]
    tensors = (Tensor * max(n, 1))()
    for k in range(n):
        t = tensors[k]
        t.param, t.grad, t.size = ptr(params[k]), ptr(grads[k]), params[k].size
        for j in range(len(names)):
            t.state[j] = ptr(states[j][k])
        t.batch = t.rows = t.cols = 1
        shape = plan["shapes"][k]
        if rule == "adafactor" and len(shape) >= 2:
            t.factored, t.rows, t.cols = 1, shape[-2], shape[-1]
            t.batch = t.size // (t.rows * t.cols)
    hyper = [plan["hyper"][k] for k in F.RULES[rule]["hyper"]]
    lr, step, decay, reg = plan["lr"], plan["step"], plan["decay"], list(plan["reg"])
    rule_arg, dtype_arg, count, tensors_arg = rule_id(rule.encode()), DTYPE_ID[dtype], n, tensors
    applied = None  # the fault that is one (a drawn fault may not apply to this call)
    if fault == "rule":
        rule_arg, applied = [-1, 999][i % 2], fault
    elif fault == "dtype":
        dtype_arg, applied = [2, -1][i % 2], fault
    elif fault == "count":
        count, applied = -1, fault
    elif fault == "tensors-null" and n:
        tensors_arg, applied = None, fault
    elif fault == "param-null" and n and params[i].size:
        tensors[i].param, applied = None, fault
    elif fault == "grad-null" and n and params[i].size:
        tensors[i].grad, applied = None, fault
    elif fault == "state-null" and n and names and params[i].size:
        tensors[i].state[0], applied = None, fault
    elif fault == "size" and n:
        tensors[i].size, applied = -1, fault
    elif fault == "misaligned" and n and params[i].size and not params[i].flags.aligned:
        applied = fault
    elif fault == "factored-view" and n and tensors[i].factored:
        tensors[i].rows, applied = tensors[i].rows + 1, fault
    elif fault == "hyper-null" and hyper:
        hyper, applied = None, fault
    elif fault == "hyper-value" and hyper:
        name = F.RULES[rule]["hyper"][i % len(hyper)]
        hyper[i % len(hyper)] = bad
        if not (math.isfinite(bad) and kernel_hyper_range(rule, name)(bad)):
            applied = fault
        else:
            plan["hyper"] = {**plan["hyper"], name: bad}
    elif fault == "step":
        step, applied = [0, -5][i % 2], fault
    elif fault == "lr" and not (math.isfinite(bad) and bad >= 0):
        lr, applied = bad, fault
    elif fault == "decay" and not (math.isfinite(bad) and bad >= 0):
        decay, applied = bad, fault
    elif fault == "regularization" and plan["regularized"] and not (math.isfinite(bad) and bad >= 0):
        reg[i % 3], applied = bad, fault
    elif fault == "grad-is-param" and n and params[i].size:
        tensors[i].grad, applied = ptr(params[i]), fault
    elif fault == "state-is-param" and n and names and params[i].size:
        tensors[i].state[0], applied = ptr(params[i]), fault
    elif fault == "params-overlap" and n >= 2 and np.shares_memory(params[0], params[1]):
        applied = fault
    note(f"fault: {applied}")
    trace(describe(test="C API apply", plan=plan, fault=applied))
    hyper_arr = None if hyper is None else (dbl * max(len(hyper), 1))(*hyper)
    inputs = ([np.array(p, np.float64) for p in params], [np.array(g, np.float64) for g in grads],
              {name: [np.array(s, np.float64) for s in group] for name, group in zip(names, states)})
    used_reg = reg if plan["regularized"] else [0.0, 0.0, 0.0]

    def call():
        if plan["regularized"]:
            return apply_regularized(rule_arg, dtype_arg, tensors_arg, count, hyper_arr, step, lr, decay, *reg)
        return apply_plain(rule_arg, dtype_arg, tensors_arg, count, hyper_arr, step, lr, decay)

    def reference(in_dtype, nudge=None):
        p0, g0, s0 = inputs
        if nudge is not None:
            p0, g0 = [nudged(p, nudge) for p in p0], [nudged(g, nudge) for g in g0]
            s0 = {k: [nudged(x, nudge) for x in v] for k, v in s0.items()}
        ref = KernelReference(rule, plan["hyper"], p0, s0, dtype=in_dtype)
        with quiet():
            ref.call(g0, lr, step, decay, *used_reg)
        return [ref.params] + [ref.slots[name] for name in names]

    def check():
        if not n:
            return
        assert_call_matches([params] + list(states), ["params"] + list(names), reference, dtype, plan["seed"],
                            f"c api {rule}")

    expect_status(call, applied, memory, check)


@fuzz_settings(500)
@given(apply_call())
def test_apply_matches_reference_or_refuses(plan):
    run_apply(plan)


# -- regularizers -------------------------------------------------------------------------------

REG_FUNCTIONS = ["sums", "sums-w0", "l1l2_gradient", "l2sp_gradient", "l2sp_gradient-w0"]
REG_FAULTS = ["dtype", "w-null", "out-null", "sum-null", "size", "misaligned", "scalar", "out-is-w", "out-overlaps-w0"]


@st.composite
def regularizer_call(draw):
    return dict(fn=draw(st.sampled_from(REG_FUNCTIONS)), dtype=draw(st.sampled_from(FLOAT_DTYPES)),
                shape=draw(shapes()), values=draw(VALUE_KINDS),
                a=draw(st.one_of(st.just(0.0), float_in(0.0, 1.0))),
                b=draw(st.one_of(st.just(0.0), float_in(0.0, 1.0))),
                seed=draw(st.integers(0, 2**32 - 1)), fault=draw(mostly(None, REG_FAULTS, 12)),
                bad=draw(st.sampled_from([-1.0, math.nan, math.inf])))


def run_regularizer(plan: dict) -> None:
    fn, dtype, fault = plan["fn"], np.dtype(plan["dtype"]), plan["fault"]
    memory = Memory(plan["seed"])
    rng = np.random.default_rng(plan["seed"] + 1)
    w = memory.place(random_values(rng, plan["shape"], plan["values"]), dtype,
                     "misaligned" if fault == "misaligned" else "c")
    w0 = memory.place(random_values(rng, plan["shape"], "normal"), dtype) if fn.endswith("w0") else None
    out = memory.place(np.zeros(plan["shape"]), dtype) if "gradient" in fn else None
    sums = (dbl(7.0), dbl(7.0))  # outside the guarded buffers: checked by value
    if out is not None:
        memory.outputs.append(out)
    size, dtype_arg, a, b = w.size, DTYPE_ID[dtype], plan["a"], plan["b"]
    w_ptr, out_ptr, w0_ptr = ptr(w), ptr(out), ptr(w0)
    sum_abs, sum_sq = ctypes.byref(sums[0]), ctypes.byref(sums[1])
    applied = None
    if fault == "dtype":
        dtype_arg, applied = 5, fault
    elif fault == "w-null" and size:
        w_ptr, applied = None, fault
    elif fault == "out-null" and out is not None and size:
        out_ptr, applied = None, fault
    elif fault == "sum-null" and fn.startswith("sums"):
        sum_abs, applied = None, fault
    elif fault == "size":
        size, applied = -1, fault
    elif fault == "misaligned" and size and not w.flags.aligned:
        applied = fault
    elif fault == "scalar" and fn != "sums" and fn != "sums-w0":
        a, applied = plan["bad"], fault
    elif fault == "out-is-w" and out is not None and size >= 2:
        # One element past w: a partial overlap (out == w itself is in place, allowed).
        out_ptr, applied = w_ptr + w.itemsize, fault
    elif fault == "out-overlaps-w0" and out is not None and w0 is not None and size >= 2:
        out_ptr, applied = w0_ptr + w0.itemsize, fault
    note(f"fault: {applied}")
    trace(describe(test="C API regularizers", plan=plan, fault=applied))
    w64 = np.array(w, np.float64)
    w064 = None if w0 is None else np.array(w0, np.float64)
    if fn.startswith("sums"):
        call = lambda: regularizer_sums(dtype_arg, w_ptr, w0_ptr, size, sum_abs, sum_sq)  # noqa: E731
    elif fn == "l1l2_gradient":
        call = lambda: l1l2_gradient(dtype_arg, w_ptr, out_ptr, size, a, b)  # noqa: E731
    else:
        call = lambda: l2sp_gradient(dtype_arg, w_ptr, w0_ptr, out_ptr, size, a)  # noqa: E731

    def check():
        d = w64 - (w064 if w064 is not None else 0.0)
        if fn.startswith("sums"):
            for got, exact in ((sums[0].value, float(np.sum(np.abs(d)))), (sums[1].value, float(np.sum(d * d)))):
                if not (got == exact or abs(got - exact) <= 1e-12 * abs(exact)):
                    raise failure("wrong result", f"c api {fn}")(f"{got!r} vs {exact!r}")
            return
        with quiet():
            exact = a * np.sign(w64) + 2 * b * w64 if fn == "l1l2_gradient" else a * d
        assert_matches([out], [exact], dtype, fn, where=f"c api {fn}")

    expect_status(call, applied, memory, check)
    if applied is not None and fn.startswith("sums"):
        assert [s.value for s in sums] == [7.0, 7.0], "refused call wrote the sums"


@fuzz_settings(300)
@given(regularizer_call())
def test_regularizers_match_reference_or_refuse(plan):
    run_regularizer(plan)


# -- dropout --------------------------------------------------------------------------------------

DROPOUT_FAULTS = ["dtype", "in-null", "out-null", "shape-null", "rank", "negative-dim", "noise-entry", "rate",
                  "in-is-out", "misaligned"]


@st.composite
def dropout_call(draw):
    shape = draw(shapes())
    return dict(dtype=draw(st.sampled_from(FLOAT_DTYPES)), shape=shape,
                noise=tuple(draw(st.sampled_from([1, d])) for d in shape),
                rate=draw(st.one_of(st.just(0.0), float_in(0.0, 0.95))),
                seed=draw(st.tuples(st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1))),
                from_mask=draw(st.booleans()), mask_out=draw(st.booleans()), values=draw(VALUE_KINDS),
                buffer_seed=draw(st.integers(0, 2**32 - 1)), fault=draw(mostly(None, DROPOUT_FAULTS, 12)),
                bad=draw(st.sampled_from([-0.1, 1.0, math.nan, math.inf])))


def run_dropout(plan: dict) -> None:
    dtype, shape, noise, fault = np.dtype(plan["dtype"]), plan["shape"], list(plan["noise"]), plan["fault"]
    memory = Memory(plan["buffer_seed"])
    rng = np.random.default_rng(plan["buffer_seed"] + 1)
    x = memory.place(random_values(rng, shape, plan["values"]), dtype, "misaligned" if fault == "misaligned" else "c")
    y = memory.place(np.zeros(shape), dtype)
    count = int(np.prod(noise, dtype=np.int64))
    nbytes = (count + 7) // 8
    mask_in = memory.place(rng.integers(0, 256, nbytes).astype(np.float64), np.uint8) if plan["from_mask"] else None
    mask_out = memory.place(np.zeros(nbytes), np.uint8) if plan["mask_out"] else None
    memory.outputs += [y] + ([mask_out] if mask_out is not None else [])
    x_shape = (i64 * max(len(shape), 1))(*shape)
    noise_arr = (i64 * max(len(noise), 1))(*noise)
    dtype_arg, in_ptr, out_ptr, rank, rate = DTYPE_ID[dtype], ptr(x), ptr(y), len(shape), plan["rate"]
    shape_arg, noise_arg = x_shape, noise_arr
    applied = None
    if fault == "dtype":
        dtype_arg, applied = 3, fault
    elif fault == "in-null" and x.size:
        in_ptr, applied = None, fault
    elif fault == "out-null" and x.size:
        out_ptr, applied = None, fault
    elif fault == "shape-null" and rank:
        shape_arg, applied = None, fault
    elif fault == "rank":
        rank, applied = -1, fault
    elif fault == "negative-dim" and rank:
        x_shape[0], applied = -2, fault
    elif fault == "noise-entry" and rank:
        noise_arr[rank - 1], applied = shape[-1] + 2, fault
    elif fault == "rate" and not (math.isfinite(plan["bad"]) and 0 <= plan["bad"] < 1):
        rate, applied = plan["bad"], fault
    elif fault == "in-is-out" and x.size >= 2:
        # One element past x: a partial overlap (y == x itself is in place, allowed).
        out_ptr, applied = in_ptr + x.itemsize, fault
    elif fault == "misaligned" and x.size and not x.flags.aligned:
        applied = fault
    note(f"fault: {applied}")
    trace(describe(test="C API dropout", plan=plan, fault=applied))
    x64 = np.array(x, np.float64)

    def call():
        return dropout(dtype_arg, in_ptr, out_ptr, shape_arg, noise_arg, rank, rate, plan["seed"][0],
                       plan["seed"][1], ptr(mask_in), ptr(mask_out))

    def check():
        if mask_in is not None:
            bits = np.unpackbits(mask_in, bitorder="little")[:count].astype(bool).reshape(noise)
            keep, noise_keep = np.broadcast_to(bits, shape), bits
        else:
            keep, noise_keep = keep_mask(shape, tuple(noise), dtype, rate, plan["seed"])
        if mask_out is not None:
            expected_bits = np.packbits(np.asarray(noise_keep).reshape(-1).astype(np.uint8), bitorder="little")
            if mask_out.tobytes() != expected_bits.tobytes():
                raise failure("wrong mask", "c api dropout")(f"{mask_out!r} vs {expected_bits!r}")
        scale = dtype.type(1.0 / (1.0 - rate))
        with quiet():
            expected = np.where(keep, x64.astype(dtype) * scale, 0.0)
        assert_matches([y], [expected], dtype, "out", where="c api dropout")

    expect_status(call, applied, memory, check)


@fuzz_settings(300)
@given(dropout_call())
def test_dropout_matches_reference_or_refuses(plan):
    run_dropout(plan)


def test_rule_introspection_refuses_unknown_rules():
    """Unknown names and ids: -1 (or 0 for the flags), never a crash."""
    assert rule_id(b"no such rule") == -1
    for bad in (-1, 10_000):
        assert rule_num_states(bad) == -1 and rule_num_hyper(bad) == -1
    for rule in RULES:
        rid = rule_id(rule.encode())
        assert rid >= 0
        assert rule_num_states(rid) == len(F.RULES[rule]["states"])
        assert rule_num_hyper(rid) == len(F.RULES[rule]["hyper"])
