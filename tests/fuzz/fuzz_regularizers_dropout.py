"""Fuzzing `fusedopt.regularizers` and dropout (`fusedopt.ops.dropout`,
`dropout_backward`). Run through tests/test_fuzz.py (each property in a child
process).

Property: a call either equals its float64 reference (the formulas in the
regularizers' docstrings; for dropout a NumPy Philox4x32-10 and TensorFlow's
stateless uniform, written here from the Random123 paper and TF's
documented bit mapping) and writes nothing but its outputs, or it raises the
TypeError/ValueError the spec names for its fault and changes nothing.
"""

from __future__ import annotations

import math
import numbers

import numpy as np
from hypothesis import given, note
from hypothesis import strategies as st

import fusedopt
import fusedopt.regularizers as R
from fusedopt import _core
from fusedopt.ops import dropout, dropout_backward
from fuzz_numpy import (
    FLOAT_DTYPES,
    ISAS,
    array_fault,
    array_faults,
    assert_matches,
    bad_scalar,
    hard_scalars,
    make_array,
    nonnegative,
    scalar_fault,
    spread_of,
)
from fuzzlib import (
    VALUE_KINDS,
    Fault,
    Memory,
    Scalar,
    describe,
    expect_outcome,
    shown,
    failure,
    float_in,
    fuzz_settings,
    mostly,
    overlaps,
    quiet,
    random_values,
    shapes,
    specials,
    sprinkle,
    trace,
    type_fault,
    value_fault,
)

# -- regularizers -----------------------------------------------------------------------

FUNCTIONS = ["l1l2_penalty", "l1l2_gradient", "proximal_step_", "l2sp_penalty", "l2sp_gradient"]
# Array arguments per function: (name, written, may be None (a new weight))
ARRAYS = {
    "l1l2_penalty": [("w", False, False)],
    "l1l2_gradient": [("w", False, False), ("out", True, False)],
    "proximal_step_": [("w", True, False), ("g", False, False)],
    "l2sp_penalty": [("w", False, False), ("w0", False, True)],
    "l2sp_gradient": [("w", False, False), ("w0", False, True), ("out", True, False)],
}
SCALARS = {
    "l1l2_penalty": ["l1", "l2"], "l1l2_gradient": ["l1", "l2"],
    "proximal_step_": ["learning_rate", "l1", "l2"],
    "l2sp_penalty": ["alpha", "beta"], "l2sp_gradient": ["alpha", "beta"],
}
REG_FAULTS = ["array"] * 4 + ["scalar", "structure", "aliasing"]
REG_STRUCTURE = ["w-not-array", "list-vs-single", "short", "w0-not-list", "out-none-entry"]


@st.composite
def regularizer_call(draw, misaligned: bool = False, hard_scalar: bool = False, non_finite: bool = False):
    fn = draw(st.sampled_from(FUNCTIONS), label="function")
    dtype = draw(st.sampled_from(FLOAT_DTYPES), label="dtype")
    single = draw(mostly(False, [True], 3), label="single array")
    n = 1 if single else draw(st.sampled_from([1, 2, 3, 0, 1, 2, 3]), label="num_arrays")
    shape_list = [draw(shapes(), label=f"shape[{i}]") for i in range(n)]
    names = ARRAYS[fn]
    kinds = st.sampled_from(["normal", "special"]) if non_finite else VALUE_KINDS
    values = {(a, 0, i): draw(kinds) for a, _, _ in names for i in range(n)}
    new_weight = {i: draw(mostly(False, [True], 3)) for i in range(n)} if fn.startswith("l2sp") else {}
    scalars = {s: draw(st.one_of(st.just(0.0), float_in(0.0, 1.0), float_in(0.0, 0.1)), label=s)
               for s in SCALARS[fn]}
    plan = dict(function=fn, dtype=dtype, single=single, shapes=shape_list, values=values,
                new_weight=new_weight, scalars=scalars, out_given=draw(st.booleans(), label="out given"),
                seed=draw(st.integers(0, 2**32 - 1), label="seed"), threads=draw(st.integers(1, 3)),
                isa=draw(st.sampled_from(ISAS)), faults=[])
    keys = [(a, 0, i) for a, _, _ in names for i in range(n) if a != "out" or plan["out_given"]]
    if non_finite:
        return plan
    if misaligned:
        if keys:
            plan["faults"] = [{"kind": "array", "array": draw(array_fault(keys, ["misaligned"]))}]
        return plan
    if hard_scalar:
        plan["faults"] = [{"kind": "scalar", "name": draw(st.sampled_from(SCALARS[fn])), "value": draw(hard_scalars())}]
        return plan
    for _ in range(draw(mostly(0, [1] * 8 + [2], 10), label="num_faults")):
        kind = draw(st.sampled_from(REG_FAULTS))
        if kind == "array" and keys:
            plan["faults"].append({"kind": "array", "array": draw(array_fault(keys))})
        elif kind == "scalar":
            plan["faults"].append({"kind": "scalar", "name": draw(st.sampled_from(SCALARS[fn])),
                                   "value": draw(bad_scalar())})
        elif kind == "structure":
            plan["faults"].append({"kind": "structure", "what": draw(st.sampled_from(REG_STRUCTURE))})
        elif kind == "aliasing" and n and len(names) > 1:
            plan["faults"].append({"kind": "aliasing", "i": draw(st.integers(0, n - 1)),
                                   "pair": draw(st.sampled_from([(a, b) for a, _, _ in names for b, _, _ in names
                                                                 if a != b]))})
    return plan


def regularizer_reference(fn: str, arrays: dict, scalars: dict, dtype):
    """The docstrings' formulas, in `dtype` (float64: the reference). L1L2
    as keras.regularizers.L1L2 computes it: a zero strength's term is left
    out (not 0 * inf = NaN for an infinite weight)."""
    w = [np.asarray(a, dtype) for a in arrays["w"]]
    w0 = [None if a is None else np.asarray(a, dtype) for a in arrays.get("w0", [None] * len(w))]
    l1, l2 = scalars.get("l1", 0.0), scalars.get("l2", 0.0)
    with quiet():
        if fn == "l1l2_penalty":
            return sum((l1 * np.sum(np.abs(x)) if l1 else 0.0) + (l2 * np.sum(x * x) if l2 else 0.0) for x in w)
        if fn == "l1l2_gradient":
            return [(l1 * np.sign(x) if l1 else np.zeros_like(x)) + (2 * l2 * x if l2 else 0) for x in w]
        if fn == "proximal_step_":
            lr, l1, l2 = scalars["learning_rate"], scalars["l1"], scalars["l2"]
            out = []
            for x, g in zip(w, arrays["g"]):
                v = x - lr * np.asarray(g, dtype)
                out.append(np.sign(v) * np.maximum(np.abs(v) - lr * l1, 0) / (1 + lr * l2))
            return out
        alpha, beta = scalars["alpha"], scalars["beta"]
        if fn == "l2sp_penalty":
            return sum(beta / 2 * np.sum(x * x) if x0 is None else alpha / 2 * np.sum((x - x0) ** 2)
                       for x, x0 in zip(w, w0))
        return [beta * x if x0 is None else alpha * (x - x0) for x, x0 in zip(w, w0)]


def run_regularizer_example(plan: dict, test: str) -> None:
    fn, dtype, n, single = plan["function"], plan["dtype"], len(plan["shapes"]), plan["single"]
    memory = Memory(plan["seed"])
    rng = np.random.default_rng(plan["seed"] + 1)
    fault = next((f["array"] for f in plan["faults"] if f["kind"] == "array"), None)
    arrays = {}
    for name, written, may_be_none in ARRAYS[fn]:
        if name == "out" and not plan["out_given"]:
            continue
        group = []
        for i, s in enumerate(plan["shapes"]):
            if may_be_none and plan["new_weight"].get(i):
                group.append(None)
            else:
                kind = plan["values"][(name, 0, i)]
                v = sprinkle(rng, random_values(rng, s, "normal"), specials()) if kind == "special" \
                    else random_values(rng, s, kind)
                group.append(make_array(memory, v, dtype, fault, (name, 0, i), rng))
        arrays[name] = group
    for f in plan["faults"]:
        if f["kind"] == "aliasing" and f["pair"][0] in arrays and f["pair"][1] in arrays:
            a, b = f["pair"]
            if arrays[b][f["i"]] is not None:
                arrays[a][f["i"]] = arrays[b][f["i"]]
    scalars = dict(plan["scalars"])
    for f in plan["faults"]:
        if f["kind"] == "scalar":
            scalars[f["name"]] = f["value"].value
    # The call's arguments: one array (or None) per name, or lists.
    args = {k: (v[0] if single else list(v)) for k, v in arrays.items()}
    structure = list(dict.fromkeys(f["what"] for f in plan["faults"] if f["kind"] == "structure"))
    for what in structure:
        if what == "w-not-array":
            args["w"] = "w" if single else [3.0] + list(args["w"])[1:]
        elif what == "list-vs-single" and len(args) > 1:
            other = [k for k in args if k != "w"][0]
            x = args[other]
            args[other] = (x[0] if x else None) if isinstance(x, list) else [x]
        elif what == "short" and len(args) > 1 and not single:
            other = [k for k in args if k != "w"][0]
            if isinstance(args[other], list):
                args[other] = args[other][:-1] if args[other] else [np.zeros(1, dtype)]
        elif what == "w0-not-list" and "w0" in args and not single:
            args["w0"] = 0.5
        elif what == "out-none-entry" and "out" in args and not single and n:
            args["out"] = [None] + list(args["out"])[1:]
    for x in arrays.get("out", []) + (arrays["w"] if fn == "proximal_step_" else []):
        if isinstance(x, np.ndarray):
            memory.outputs.append(x)
    faults = regularizer_faults(fn, dtype, args, scalars)
    note(f"faults: {shown(faults)}")
    trace(describe(test=test, plan=plan, faults=faults))
    fusedopt.set_num_threads(plan["threads"])
    _core.set_isa(plan["isa"])
    inputs = None if faults else {k: [None if a is None else np.array(a, np.float64) for a in v]
                                  for k, v in arrays.items()}

    if arrays["w"] and isinstance(arrays["w"][0], np.ndarray):
        dtype = arrays["w"][0].dtype  # float64 arrays in a float32 plan are valid

    def check(result):
        exact = regularizer_reference(fn, inputs, scalars, np.float64)
        low = regularizer_reference(fn, inputs, scalars, np.float32)
        if fn.endswith("penalty"):  # sums in double: close to the exact sum
            assert isinstance(result, float), f"{fn} returned {type(result).__name__}"
            tol = 1e-12 * abs(exact) + 1e-300
            if not (result == exact or abs(result - exact) <= tol or (np.isnan(result) and np.isnan(exact))):
                raise failure("wrong result", fn)(f"{fn}: {result!r} vs {exact!r}")
            return
        if fn == "proximal_step_":
            actual = arrays["w"]
        elif plan["out_given"]:
            actual = arrays["out"]
            got = result if not single else [result]
            assert all(r is o for r, o in zip(got, actual)), f"{fn} did not return its out arrays"
        else:
            actual = [result] if single else result
            assert all(a.dtype == dtype for a in actual), "new outputs have the params' dtype"
        assert_matches(actual, exact, dtype, fn, spread_of(exact, low, dtype), where=fn)

    call = getattr(R, fn)
    expect_outcome(lambda: call(**args, **scalars), faults, memory, check)


def regularizer_faults(fn: str, dtype, args: dict, scalars: dict) -> list[Fault]:
    """What is wrong with a regularizer call. `w` decides the mode: a list or
    tuple of arrays, else one array; every other array argument must come the
    same way (w0 may be None for one new weight, out None for new arrays)."""
    faults = []
    for name, v in scalars.items():
        faults += scalar_fault(name, v, nonnegative)
    listed = isinstance(args["w"], (list, tuple))
    items = {"w": list(args["w"]) if listed else [args["w"]]}
    for name in args:
        if name == "w":
            continue
        x = args[name]
        if not listed and ((name == "w0" and x is None) or isinstance(x, np.ndarray) and name != "w0"):
            items[name] = [x]
        elif name == "w0" and not listed:
            items[name] = [x]  # any object: the array check below names w0[0]
        elif listed != isinstance(x, (list, tuple)):
            faults.append(type_fault("list-vs-single", name))
        else:
            items[name] = list(x) if listed else [x]
    ws = items["w"]
    first = ws[0].dtype if ws and isinstance(ws[0], np.ndarray) else dtype
    for name, written, may_be_none in ARRAYS[fn]:
        if name not in items:
            continue
        xs = items[name]
        if name != "w" and len(xs) != len(ws):
            faults.append(value_fault("list-length", name))
            continue
        for i, x in enumerate(xs):
            if x is None and may_be_none:
                continue
            ref = ws[i] if name != "w" and isinstance(ws[i], np.ndarray) else None
            faults += array_faults(f"{name}[{i}]", x, ref.dtype if ref is not None else first,
                                   ref.shape if ref is not None else None, written)
    written = [k for k, wr, _ in ARRAYS[fn] if wr and k in items]
    read = [k for k, wr, _ in ARRAYS[fn] if not wr and k in items]
    outputs = [(f"{k}[{i}]", x) for k in written for i, x in enumerate(items[k])]
    inputs = [(f"{k}[{i}]", x) for k in read for i, x in enumerate(items[k])]
    for m, (la, a) in enumerate(outputs):
        for lb, b in outputs[m + 1:] + inputs:
            if overlaps(a, b):
                faults.append(value_fault("aliasing", la, lb))
    return faults


@fuzz_settings(1000)
@given(regularizer_call())
def test_regularizers_match_reference_or_reject(plan):
    run_regularizer_example(plan, "regularizers")


@fuzz_settings(200)
@given(regularizer_call(non_finite=True))
def test_regularizers_propagate_non_finite_values_like_keras(plan):
    """NaN and infinities in the weights (and starting points, gradients,
    outputs' old contents) give what Keras's L1/L2/L1L2 and the documented
    formulas give."""
    run_regularizer_example(plan, "regularizers, non-finite values")


# -- dropout ------------------------------------------------------------------------------

PHILOX_M = (0xD2511F53, 0xCD9E8D57)
PHILOX_W = (0x9E3779B9, 0xBB67AE85)
MASK32 = np.uint64(0xFFFFFFFF)


def philox4x32_10(counter: list, key: tuple) -> list:
    """Philox4x32-10 (Salmon et al., SC'11) over arrays of counters: four
    uint64 arrays holding 32-bit words."""
    c0, c1, c2, c3 = (np.asarray(c, np.uint64) for c in counter)
    k0, k1 = np.uint64(key[0]), np.uint64(key[1])
    for _ in range(10):
        p0, p1 = np.uint64(PHILOX_M[0]) * c0, np.uint64(PHILOX_M[1]) * c2
        c0, c1, c2, c3 = (p1 >> np.uint64(32)) ^ c1 ^ k0, p1 & MASK32, (p0 >> np.uint64(32)) ^ c3 ^ k1, p0 & MASK32
        k0, k1 = (k0 + np.uint64(PHILOX_W[0])) & MASK32, (k1 + np.uint64(PHILOX_W[1])) & MASK32
    return [c0, c1, c2, c3]


def tf_key_counter(seed0: int, seed1: int):
    """TensorFlow's stateless seed -> (key, counter): the seed pair's words are
    scrambled by one Philox block under a fixed key."""
    words = [seed0 & 0xFFFFFFFF, seed0 >> 32 & 0xFFFFFFFF, seed1 & 0xFFFFFFFF, seed1 >> 32 & 0xFFFFFFFF]
    mix = [int(x[0]) for x in philox4x32_10([[w] for w in words], (0x3EC8F720, 0x02461E29))]
    return (mix[0], mix[1]), [0, 0, mix[2], mix[3]]


def tf_uniform(n: int, dtype, seed0: int, seed1: int) -> np.ndarray:
    """tf.random.stateless_uniform's n values in [0, 1) of `dtype` on CPU:
    float32 from one 32-bit word (mantissa bits), float64 from two."""
    key, counter = tf_key_counter(seed0, seed1)
    per_block = 4 if np.dtype(dtype) == np.float32 else 2
    blocks = np.arange((n + per_block - 1) // per_block, dtype=np.uint64)
    lo = (np.uint64(counter[0]) + blocks) & MASK32  # counter[0], counter[1] start at 0
    hi = (np.uint64(counter[1]) + (blocks >> np.uint64(32))) & MASK32
    out = philox4x32_10([lo, hi, np.full_like(lo, counter[2]), np.full_like(lo, counter[3])], key)
    words = np.stack(out, axis=1).reshape(-1)  # block-major, four words per block
    if per_block == 4:
        bits = (words & np.uint64(0x7FFFFF)) | np.uint64(0x3F800000)
        return (bits.astype(np.uint32).view(np.float32) - np.float32(1.0))[:n]
    pairs = words.reshape(-1, 2)
    bits = ((pairs[:, 0] & np.uint64(0xFFFFF)) << np.uint64(32)) | pairs[:, 1] | np.uint64(1023 << 52)
    return (bits.view(np.float64) - 1.0)[:n]


def keep_mask(shape, noise, dtype, rate, seed_words) -> np.ndarray:
    """The keep decisions over x's shape: u >= rate (in x's dtype) over the
    noise shape (right-aligned, padded with 1s), broadcast over x."""
    padded = (1,) * (len(shape) - len(noise)) + tuple(noise)
    u = tf_uniform(int(np.prod(padded, dtype=np.int64)), dtype, *seed_words).reshape(padded)
    return np.broadcast_to(u >= np.asarray(rate, dtype), shape), u >= np.asarray(rate, dtype)


def seed_words(seed) -> tuple:
    """Keras's int seed S is the pair (S mod 2**31 - 2, 0); a pair is used as
    is; each value is read as uint64."""
    pair = (seed % (2**31 - 2), 0) if not isinstance(seed, (tuple, list)) else tuple(seed)
    return tuple(int(v) & (2**64 - 1) for v in pair)


def is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, (bool, np.bool_))


def seed_faults(seed) -> list[Fault]:
    if isinstance(seed, (tuple, list)):
        if len(seed) != 2:
            return [value_fault("seed", "seed")]
        out = []
        for i, v in enumerate(seed):
            if not is_int(v):
                out.append(type_fault("seed", f"seed[{i}]"))
            elif not -(2**63) <= int(v) < 2**63:
                out.append(value_fault("seed", f"seed[{i}]"))
        return out
    if not is_int(seed):
        return [type_fault("seed", "seed")]
    return [] if -(2**63) <= int(seed) < 2**63 else [value_fault("seed", "seed")]


def noise_faults(x, noise_shape) -> tuple[list[Fault], tuple | None]:
    """(faults, the concrete noise shape)."""
    if noise_shape is None:
        return [], tuple(x.shape) if isinstance(x, np.ndarray) else None
    if not isinstance(noise_shape, (tuple, list)):
        return [type_fault("noise_shape", "noise_shape")], None
    shape = tuple(x.shape) if isinstance(x, np.ndarray) else ()
    out = []
    for i, d in enumerate(noise_shape):
        if d is None:
            if i >= len(shape):
                return [value_fault("noise_shape", "noise_shape")], None
            d = shape[i]
        if not is_int(d):
            return [type_fault("noise_shape", f"noise_shape[{i}]")], None
        if not -(2**63) <= int(d) < 2**63:
            return [value_fault("noise_shape", f"noise_shape[{i}]")], None
        out.append(int(d))
    if not isinstance(x, np.ndarray):
        return [], None
    ok = len(out) <= len(shape) and all(d == 1 or d == shape[len(shape) - len(out) + j] for j, d in enumerate(out))
    return ([] if ok else [value_fault("noise_shape", "noise_shape")]), tuple(out)


def rate_faults(rate) -> list[Fault]:
    if isinstance(rate, (bool, np.bool_)) or not isinstance(rate, (numbers.Real, np.floating, np.integer)):
        return [type_fault("rate", "rate")]
    try:
        r = float(rate)
    except OverflowError:
        return [value_fault("rate", "rate")]
    return [] if math.isfinite(r) and 0 <= r < 1 else [value_fault("rate", "rate")]


DROPOUT_FAULTS = ["x", "x", "rate", "seed", "noise_shape", "mask", "mask-and-seed"]


@st.composite
def dropout_call(draw, misaligned: bool = False, hard_scalar: bool = False):
    dtype = draw(st.sampled_from(FLOAT_DTYPES), label="dtype")
    shape = draw(shapes(), label="shape")
    noise = None
    if draw(st.booleans(), label="noise_shape?") and shape:
        rank = draw(st.integers(0, len(shape)), label="noise rank")  # right-aligned against x's shape
        noise = tuple(draw(st.sampled_from([1, d])) for d in shape[len(shape) - rank:])
        if rank == len(shape) and draw(st.booleans()):  # Keras's form: None for x's size
            noise = tuple(None if d == s and draw(st.booleans()) else d for d, s in zip(noise, shape))
    seed = draw(st.one_of(st.integers(-(2**63), 2**63 - 1), st.integers(0, 100),
                          st.tuples(st.integers(-(2**63), 2**63 - 1), st.integers(-(2**63), 2**63 - 1))),
                label="seed")
    plan = dict(dtype=dtype, shape=shape, noise_shape=noise, seed=seed,
                rate=draw(st.one_of(st.just(0.0), float_in(0.0, 0.95), st.just(0.5)), label="rate"),
                backward=draw(st.sampled_from([None, "mask", "seed"]), label="backward"),
                values=draw(st.one_of(VALUE_KINDS, st.just("special"))), buffer_seed=draw(st.integers(0, 2**32 - 1)),
                threads=draw(st.integers(1, 3)), isa=draw(st.sampled_from(ISAS)), faults=[])
    role = "x" if plan["backward"] is None else "dy"
    if misaligned:
        plan["faults"] = [{"kind": "array", "array": {"kind": "misaligned", "key": (role, 0, 0)}}]
        return plan
    if hard_scalar:
        plan["faults"] = [{"kind": "rate", "value": draw(hard_scalars())}]
        return plan
    if draw(mostly(False, [True], 3), label="fault?"):
        kind = draw(st.sampled_from(DROPOUT_FAULTS))
        f = {"kind": kind}
        if kind == "x":
            f = {"kind": "array", "array": draw(array_fault([(role, 0, 0)]))}
        elif kind == "rate":
            f["value"] = draw(st.one_of(bad_scalar(), st.sampled_from([1.0, 1.5, -0.1, True]).map(Scalar)))
        elif kind == "seed":
            f["value"] = draw(st.sampled_from([None, 1.5, "3", (1, 2, 3), (1,), (1, 2.0), 2**64, -(2**63) - 1,
                                               (2**63, 0), True, [4, 5]]))
        elif kind == "noise_shape":
            f["value"] = draw(st.sampled_from(["extra-dim", "wrong-size", "negative", "float", "not-tuple",
                                               "none-beyond-rank", "bool"]))
        elif kind == "mask":
            f["value"] = draw(st.sampled_from(["short", "int8", "2-d", "strided", "not-array"]))
        plan["faults"].append(f)
    return plan


def run_dropout_example(plan: dict, test: str) -> None:
    dtype, shape = plan["dtype"], plan["shape"]
    memory = Memory(plan["buffer_seed"])
    rng = np.random.default_rng(plan["buffer_seed"] + 1)
    role = "x" if plan["backward"] is None else "dy"
    fault = next((f["array"] for f in plan["faults"] if f["kind"] == "array"), None)
    values = random_values(rng, shape, "normal")
    if plan["values"] == "special":
        values = sprinkle(rng, values, specials())
    else:
        values = random_values(rng, shape, plan["values"])
    x = make_array(memory, values, dtype, fault, (role, 0, 0), rng)
    if isinstance(x, np.ndarray):  # x decides the shape (and float64 in a float32 plan is valid)
        shape = x.shape
        dtype = x.dtype if x.dtype in FLOAT_DTYPES else dtype
    rate, seed, noise = plan["rate"], plan["seed"], plan["noise_shape"]
    mask_fault = None
    for f in plan["faults"]:
        if f["kind"] == "rate":
            rate = f["value"].value
        elif f["kind"] == "seed":
            seed = f["value"]
        elif f["kind"] == "noise_shape":
            noise = bad_noise_shape(shape, f["value"])
        elif f["kind"] == "mask":
            mask_fault = f["value"]
    fusedopt.set_num_threads(plan["threads"])
    _core.set_isa(plan["isa"])
    faults = array_faults(f"{role} ", x, dtype, None, False)
    faults += rate_faults(rate)
    nf, concrete = noise_faults(x, noise)
    faults += nf
    mask = None
    if role == "dy":
        # The packed mask of a forward pass with valid arguments (or no mask: regenerate from the seed).
        if plan["backward"] == "mask" or any(f["kind"] == "mask-and-seed" for f in plan["faults"]):
            m = concrete if concrete is not None else tuple(shape)
            count = int(np.prod([max(d, 0) for d in m], dtype=np.int64))  # a bad noise shape may be negative
            mask = memory.place(rng.integers(0, 256, (count + 7) // 8).astype(np.float64), np.uint8)
            if mask_fault == "short":
                mask = mask[:-1] if mask.size else memory.place(np.ones(1), np.uint8)
            elif mask_fault == "int8":
                mask = memory.place(np.asarray(mask, np.float64) % 128, np.int8)
            elif mask_fault == "2-d":
                mask = mask.reshape(1, -1)
            elif mask_fault == "strided":
                mask = memory.place(np.zeros(2 * mask.size + 2), np.uint8)[::2][: mask.size] if mask.size > 1 \
                    else mask.reshape(1, -1)
            elif mask_fault == "not-array":
                mask = mask.tolist()
        bseed = seed if (plan["backward"] == "seed" or any(f["kind"] == "mask-and-seed" for f in plan["faults"])) \
            else None
        if (mask is None) == (bseed is None):
            faults.append(value_fault("mask-or-seed", "packed_mask"))
        if bseed is not None:
            faults += seed_faults(bseed)
        if mask is not None and not faults:
            if not isinstance(mask, np.ndarray):
                faults.append(type_fault("mask", "packed_mask"))
            elif mask.dtype != np.uint8:
                faults.append(type_fault("mask", "packed_mask"))
            elif not mask.flags.c_contiguous:
                faults.append(value_fault("mask", "packed_mask"))
            elif mask.ndim != 1 or mask.size != (int(np.prod(concrete, dtype=np.int64)) + 7) // 8:
                faults.append(value_fault("mask", "packed_mask"))
    else:
        faults += seed_faults(seed)
    if mask is not None and isinstance(mask, np.ndarray):
        memory.adopt(mask)
    note(f"faults: {shown(faults)}")
    trace(describe(test=test, plan=plan, faults=faults))
    x_in = None if faults else np.array(x, np.float64)

    def check(result):
        dt = x.dtype  # float64 in a float32 plan is valid
        scale = dt.type(1.0 / (1.0 - float(rate)))
        if role == "x":
            y, packed = result
            keep, noise_keep = keep_mask(shape, concrete, dt, float(rate), seed_words(seed))
            expected_bits = np.packbits(noise_keep.reshape(-1).astype(np.uint8), bitorder="little")
            if not (isinstance(packed, np.ndarray) and packed.dtype == np.uint8
                    and packed.tobytes() == expected_bits.tobytes()):
                raise failure("wrong mask", "dropout")(f"mask {packed!r} vs {expected_bits!r}")
        else:
            y = result
            if mask is not None:
                count = int(np.prod(concrete, dtype=np.int64))
                bits = np.unpackbits(mask, bitorder="little")[:count].astype(bool)
                padded = (1,) * (len(shape) - len(concrete)) + tuple(concrete)
                keep = np.broadcast_to(bits.reshape(padded), shape)
            else:
                keep = keep_mask(shape, concrete, dt, float(rate), seed_words(bseed))[0]
        assert isinstance(y, np.ndarray) and y.dtype == dt and y.shape == shape, "output dtype and shape"
        with np.errstate(all="ignore"):  # TF: where(keep, x * scale, 0) in x's dtype
            expected = np.where(keep, x_in.astype(dt) * scale, 0.0)
        assert_matches([y], [expected.astype(np.float64)], dt, role, where="dropout")

    if role == "x":
        call = lambda: dropout(x, rate, seed, noise_shape=noise)  # noqa: E731
    else:
        call = lambda: dropout_backward(x, mask, rate, seed=bseed, noise_shape=noise)  # noqa: E731
    expect_outcome(call, faults, memory, check)


def bad_noise_shape(shape: tuple, what: str):
    if what == "extra-dim":
        return (1,) + tuple(shape) + (1,)
    if what == "wrong-size":
        return tuple(shape[:-1]) + ((shape[-1] + 2),) if shape else (2,)
    if what == "negative":
        return tuple(shape[:-1]) + (-1,) if shape else (-1,)
    if what == "float":
        return tuple(float(d) for d in shape) or (1.0,)
    if what == "not-tuple":
        return 4
    if what == "bool":
        return (True,) * len(shape) or (True,)
    return tuple(shape) + (None,)


@fuzz_settings(600)
@given(dropout_call())
def test_dropout_matches_reference_or_rejects(plan):
    run_dropout_example(plan, "dropout")


# -- misaligned arrays and scalars that do not convert ---------------------------------------

@fuzz_settings(80)
@given(regularizer_call(misaligned=True))
def test_regularizers_reject_misaligned_arrays(plan):
    """A misaligned array (UB in C++) is refused, with nothing written."""
    run_regularizer_example(plan, "regularizers, misaligned")


@fuzz_settings(40)
@given(dropout_call(misaligned=True))
def test_dropout_rejects_misaligned_arrays(plan):
    run_dropout_example(plan, "dropout, misaligned")


@fuzz_settings(60)
@given(st.one_of(regularizer_call(hard_scalar=True), dropout_call(hard_scalar=True)))
def test_regularizer_and_dropout_scalars_that_do_not_convert(plan):
    """An int too large for a double is not finite (ValueError); a NumPy
    array of one or two values is not a number (TypeError naming it)."""
    if "function" in plan:
        run_regularizer_example(plan, "regularizers, scalars that do not convert")
    else:
        run_dropout_example(plan, "dropout, scalars that do not convert")
