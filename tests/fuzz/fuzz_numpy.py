"""Fuzzing the NumPy doors: every `fusedopt.ops` kernel and every optimizer of
the registry. Run through tests/test_fuzz.py (each property in a child process).

Property: a call either equals the float64 reference (tests/reference.py, at
the registry's tolerances) and writes nothing but its outputs, or it raises
the TypeError/ValueError the spec names for its fault, naming the argument,
and changes nothing. Most examples are valid; the rest carry one fault (now
and then two) of a kind drawn from FAULT_KINDS.
"""

from __future__ import annotations

import inspect
import math
import numbers

import numpy as np
from hypothesis import given, note
from hypothesis import strategies as st

import fusedopt
import fusedopt.ops as F
from fusedopt import _core
from fuzzlib import (
    FTRL_LEARNING_RATES,
    HARD_SCALARS,
    VALUE_KINDS,
    Fault,
    Memory,
    Scalar,
    address,
    bad_types,
    describe,
    either_fault,
    expect_outcome,
    shown,
    failure,
    float_in,
    fuzz_settings,
    mostly,
    non_finite,
    number_types,
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
from kernel_reference import KernelReference
from reference import Reference
from registry import CASES, TOLERANCES

RULE_NAMES = sorted(F.RULES)
FLOAT_DTYPES = [np.dtype(np.float32), np.dtype(np.float64)]
# Dtypes the engine must refuse (TypeError), byte-swapped float32 included.
BAD_DTYPES = [np.dtype(d) for d in ("float16", "int32", "int64", "bool", "complex64", ">f4", ">f8", "object")]
ISAS = _core.available_isas()
# Slots that are >= 0 in any run of their rule.
NONNEGATIVE_STATES = {"velocity", "velocity_hat", "accumulator", "accumulated_grad",
                      "accumulated_delta_var", "norm", "r", "c"}
# Each kernel's documented defaults (its signature's keyword defaults).
KERNEL_DEFAULTS = {
    rule: {name: p.default for name, p in inspect.signature(getattr(F, f"{rule}_")).parameters.items()
           if name in F.RULES[rule]["hyper"] and p.default is not inspect.Parameter.empty}
    for rule in RULE_NAMES
}


# -- comparing with the reference ---------------------------------------------------

# How far the engine may be from the exact (float64) result: the registry's
# tolerances, plus SPREAD_FACTOR times how far the same formulas computed in
# float32 land from the exact result (scaled to the storage dtype's epsilon).
# Far from zero only where the update is ill-conditioned: a cancellation such
# as Keras's v + (g^2 - v)(1 - beta_2) with beta_2 = 0, a division by a tiny
# denominator, or a discontinuity (sign, clip, max) near the inputs.
SPREAD_FACTOR = 16


def spread_of(exact: list, low: list, dtype, *more_low: list) -> list:
    """Per array: |float32 result - exact result| scaled to `dtype`'s epsilon
    (inf where one of the two is NaN and the other is not); the largest over
    `low` and `more_low` (float32 runs from inputs moved by `nudged`)."""
    scale = float(np.finfo(dtype).eps / np.finfo(np.float32).eps)
    out = []
    for i, e in enumerate(exact):
        if e is None:
            out.append(None)
            continue
        spread = np.zeros(np.shape(e))
        for run in (low,) + more_low:
            lo = np.asarray(run[i], np.float64)
            with np.errstate(invalid="ignore", over="ignore"):
                d = np.where((lo == e) | (np.isnan(e) & np.isnan(lo)), 0.0, np.abs(lo - e))
            spread = np.maximum(spread, np.where(np.isnan(d), np.inf, d))
        out.append(spread * scale)
    return out


def nudged(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """x moved by one float32 epsilon (relative, random sign per element): a
    second float32 run from such inputs shows how far rounding can carry an
    ill-conditioned result, where one run may land close by luck."""
    eps = float(np.finfo(np.float32).eps)
    with np.errstate(all="ignore"):
        return np.array(x * (1 + eps * rng.choice([-1.0, 1.0], np.shape(x))))


FLOAT32_RUNS = 4  # one from the inputs as they are, the others from nudged inputs


def assert_call_matches(actual: list, what: list, reference, dtype, seed: int, where: str) -> None:
    """`actual[k]` (a list of arrays, named `what[k]`) against `reference(np.float64)[k]`,
    with the spread of FLOAT32_RUNS float32 runs of the same reference
    (`reference(np.float32, nudge)`, nudge None or a generator for `nudged`)."""
    exact = reference(np.float64)
    lows = [reference(np.float32)] + [reference(np.float32, np.random.default_rng(seed + k))
                                      for k in range(1, FLOAT32_RUNS)]
    for k, (a, name) in enumerate(zip(actual, what)):
        spread = spread_of(exact[k], lows[0][k], dtype, *[lo[k] for lo in lows[1:]])
        assert_matches(a, exact[k], dtype, name, spread, where=where)


def assert_matches(actual, expected, dtype, what: str, spread=None, where: str = "") -> None:
    """Every array close to the reference rounded to the storage dtype: NaN
    where it has NaN, the same infinities (also where the exact value
    overflows the dtype), else within the registry's tolerances (atol times
    the largest finite magnitude of the list) plus SPREAD_FACTOR * `spread`."""
    atol, rtol = TOLERANCES[np.dtype(dtype)]
    with np.errstate(over="ignore", invalid="ignore"):
        expected = [None if e is None else np.asarray(e).astype(dtype).astype(np.float64) for e in expected]
    finite = [np.abs(e[np.isfinite(e)]) for e in expected if e is not None and e.size]
    scale = max([1.0] + [float(f.max()) for f in finite if f.size])
    assert len(actual) == len(expected), what
    for i, (a, e) in enumerate(zip(actual, expected)):
        assert (a is None) == (e is None), f"{what}[{i}]: None vs array"
        if e is None:
            continue
        assert np.shape(a) == np.shape(e), f"{what}[{i}]: shape {np.shape(a)} vs {np.shape(e)}"
        a = np.asarray(a, np.float64)
        tol = atol * scale + rtol * np.abs(e)
        if spread is not None:
            tol = tol + SPREAD_FACTOR * spread[i]
        with np.errstate(invalid="ignore"):  # an infinite tolerance takes anything, NaN too
            ok = (np.isnan(a) & np.isnan(e)) | (a == e) | (np.abs(a - e) <= tol) | np.isinf(tol)
        if not np.all(ok):
            bad = np.flatnonzero(~ok.reshape(-1))
            rows = [f"  [{j}]: {a.reshape(-1)[j]!r} (actual) vs {e.reshape(-1)[j]!r} (reference)"
                    f" tolerance {np.broadcast_to(tol, e.shape).reshape(-1)[j]:.3g}" for j in bad[:6]]
            raise failure("wrong result", where or what)(
                f"{what}[{i}]: {bad.size} of {e.size} elements differ\n" + "\n".join(rows))


# -- scalars: the spec -----------------------------------------------------------------

def in_unit(x):  # [0, 1)
    return 0.0 <= x < 1.0


def nonnegative(x):
    return x >= 0


KERNEL_HYPER_RANGES = {
    # (rule or "*", hyperparameter) -> test of a finite value
    ("*", "beta_1"): in_unit, ("*", "beta_2"): in_unit, ("*", "beta_3"): in_unit, ("*", "rho"): in_unit,
    ("*", "momentum"): in_unit, ("*", "epsilon"): nonnegative,
    ("sgd_momentum", "momentum"): lambda x: 0 <= x <= 1, ("sgd_nesterov", "momentum"): lambda x: 0 <= x <= 1,
    ("lion", "beta_1"): lambda x: 0 < x <= 1,
    ("schedule_free_adamw", "beta_1"): lambda x: 0 < x < 1,
    ("*", "u_product"): in_unit,
    ("*", "learning_rate_power"): lambda x: x <= 0,
    ("*", "l1_regularization_strength"): nonnegative,
    ("*", "l2_regularization_strength"): nonnegative,
    ("*", "l2_shrinkage_regularization_strength"): nonnegative,
    ("*", "beta"): nonnegative,
    ("*", "beta_2_decay"): lambda x: x <= 0,
    ("*", "epsilon_1"): nonnegative, ("*", "epsilon_2"): nonnegative,
    ("*", "clip_threshold"): lambda x: x > 0,
    ("*", "warmup_steps"): nonnegative,
    ("*", "x_from_new_z"): lambda x: x in (0.0, 1.0), ("*", "nesterov"): lambda x: x in (0.0, 1.0),
}

# Values the comparison runs on (well inside each range; the edges included).
VALID_HYPER = {
    "beta_1": float_in(0.0, 0.99, [0.0, 0.9]),
    "beta_2": float_in(0.0, 0.999, [0.0, 0.999]),
    "beta_3": float_in(0.0, 0.999, [0.0, 0.99]),
    "rho": float_in(0.05, 0.99, [0.9]),
    "momentum": float_in(0.0, 0.99, [0.0, 0.9]),
    "epsilon": st.sampled_from([0.0, 1e-8, 1e-7, 1e-6, 1e-3, 0.1]),
    "u_product": float_in(0.0, 0.95, [0.0]),  # this step's running product
    "learning_rate_power": float_in(-1.5, 0.0, [-0.5, 0.0]),
    "l1_regularization_strength": float_in(0.0, 0.5, [0.0]),
    "l2_regularization_strength": float_in(0.0, 0.5, [0.0]),
    "l2_shrinkage_regularization_strength": float_in(0.0, 0.5, [0.0]),
    "beta": float_in(0.0, 1.0, [0.0]),
    "beta_2_decay": float_in(-1.5, 0.0, [-0.8, 0.0]),
    "epsilon_1": st.sampled_from([0.0, 1e-30, 1e-10]),
    "epsilon_2": st.sampled_from([0.0, 1e-3, 1e-2]),
    "clip_threshold": float_in(0.1, 10.0, [1.0]),
    "warmup_steps": st.integers(0, 12),
    "x_from_new_z": st.sampled_from([0, 1, True, False, 0.0]),
    "nesterov": st.sampled_from([0, 1, True, False, 1.0]),
}
# Centered RMSprop divides by sqrt(v - a^2 + eps), and v and a^2 agree to
# more and more digits as rho goes to 0: there a one-ulp difference in v, from
# the engine's and the reference's different (both valid) association of
# rho * v + (1 - rho) * g * g, is amplified past any tolerance in float32.
CENTERED_RHO = float_in(0.5, 0.99, [0.9])
CENTERED_EPSILON = st.sampled_from([1e-7, 1e-6, 1e-3, 0.1])
VALID_HYPER_FOR = {
    ("rmsprop_centered", "rho"): CENTERED_RHO, ("rmsprop_centered_momentum", "rho"): CENTERED_RHO,
    ("rmsprop_centered", "epsilon"): CENTERED_EPSILON, ("rmsprop_centered_momentum", "epsilon"): CENTERED_EPSILON,
    ("lion", "beta_1"): float_in(0.01, 1.0, [1.0, 0.9]),
    ("schedule_free_adamw", "beta_1"): float_in(0.05, 0.95, [0.9]),
    ("sgd_momentum", "momentum"): float_in(0.0, 1.0, [0.0, 1.0]),
    ("sgd_nesterov", "momentum"): float_in(0.0, 1.0, [0.0, 1.0]),
}
OUT_OF_RANGE = [-0.5, -1e-12, 1.0, 1.5, 1e300, -1e300, 0.0]


def kernel_hyper_range(rule: str, name: str):
    return KERNEL_HYPER_RANGES.get((rule, name)) or KERNEL_HYPER_RANGES[("*", name)]


def is_number(v, bool_ok: bool) -> bool:
    """Real numbers (NumPy scalars and Fractions included); bools only where
    the door takes them (the kernels: an int; the optimizers: no)."""
    if isinstance(v, (bool, np.bool_)):
        return bool_ok
    return isinstance(v, (numbers.Real, np.floating, np.integer))


def scalar_fault(name: str, v, ok, bool_ok: bool = True, none_ok: bool = False) -> list[Fault]:
    """The fault of a scalar argument: a non-number is a TypeError, a
    non-finite or out-of-range number a ValueError."""
    if v is None and none_ok:
        return []
    if not is_number(v, bool_ok):
        return [type_fault("scalar-type", name)]
    try:
        x = float(v)
    except OverflowError:  # an int too large for a double: not finite
        return [value_fault("scalar-range", name)]
    if not math.isfinite(x) or not ok(x):
        return [value_fault("scalar-range", name)]
    return []


def as_number_types(valid: st.SearchStrategy) -> st.SearchStrategy:
    """A valid value as float, int, NumPy scalar or Fraction."""
    return valid.flatmap(lambda x: st.just(x) if isinstance(x, bool) else number_types(float(x)))


def hard_scalars() -> st.SearchStrategy:
    return st.sampled_from(HARD_SCALARS).map(lambda t: Scalar(t[1], t[2], t[0]))


def bad_scalar() -> st.SearchStrategy:
    """Not a number, not finite, or (maybe) out of range."""
    return st.one_of(bad_types(), non_finite(), st.sampled_from(OUT_OF_RANGE).map(lambda x: Scalar(x, "maybe")))


# -- arrays: specs and their faults -------------------------------------------------------

ARRAY_FAULTS = ["dtype", "shape", "layout", "read-only", "not-array", "misaligned"]
BAD_LAYOUTS = ["fortran", "transposed", "strided", "reversed", "broadcast"]


@st.composite
def array_fault(draw, keys: list, kinds: list = ARRAY_FAULTS[:-1]) -> dict | None:
    """One fault in one of the arrays `keys`: a wrong dtype or shape, a
    layout that is not C-contiguous (a strided, reversed, transposed, Fortran
    or broadcast view: some of them happen to be C-contiguous, and valid),
    read-only, not an array at all, or misaligned (only when in `kinds`)."""
    if not keys:
        return None
    kind = draw(st.sampled_from(kinds))
    fault = {"kind": kind, "key": draw(st.sampled_from(keys))}
    if kind == "dtype":
        fault["dtype"] = draw(st.sampled_from(FLOAT_DTYPES + BAD_DTYPES))
    elif kind == "shape":
        fault["shape"] = draw(st.sampled_from(["extra-dim", "reversed", "one-more", "scalar"]))
    elif kind == "layout":
        fault["layout"] = draw(st.sampled_from(BAD_LAYOUTS))
    elif kind == "not-array":
        fault["value"] = draw(st.sampled_from([None, "list", 0.5, "string"]))
    return fault


def faulty_shape(shape: tuple, how: str) -> tuple:
    if how == "extra-dim":
        return shape + (1,)
    if how == "reversed" and shape[::-1] != shape:
        return shape[::-1]
    if how == "scalar" and shape != ():
        return ()
    return (int(np.prod(shape, dtype=np.int64)) + 1,)


def make_array(memory: Memory, values: np.ndarray, dtype, fault: dict | None, key, rng,
               layout: str = "c"):
    """`values` as an array of `dtype`, with `fault` applied if it targets `key`."""
    if fault is None or fault["key"] != key:
        return memory.place(values, dtype, layout)
    kind = fault["kind"]
    if kind == "dtype":
        return memory.place(values, fault["dtype"], layout)
    if kind == "shape":
        return memory.place(random_values(rng, faulty_shape(values.shape, fault["shape"]), "normal"), dtype)
    if kind == "layout":
        return memory.place(values, dtype, fault["layout"])
    if kind == "read-only":
        return memory.place(values, dtype, "read-only")
    if kind == "misaligned":
        return memory.place(values, dtype, "misaligned")
    value = fault["value"]
    return values.tolist() if value == "list" else value


def array_faults(label: str, a, dtype, shape, writable: bool) -> list[Fault]:
    """What is wrong with array `a` standing for `label` (dtype and shape as
    expected, written when `writable`)."""
    if not isinstance(a, np.ndarray):
        return [type_fault("not-an-array", label)]
    faults = []
    if a.dtype != dtype or np.dtype(dtype) not in FLOAT_DTYPES:
        faults.append(type_fault("dtype", label))
    if shape is not None and a.shape != tuple(shape):
        faults.append(value_fault("shape", label))
    if not a.flags.c_contiguous:
        faults.append(value_fault("layout", label))
    elif writable and not a.flags.writeable:
        faults.append(value_fault("read-only", label))
    if not a.flags.aligned:
        faults.append(value_fault("misaligned", label))
    return faults


def aliasing_faults(outputs: list, inputs: list) -> list[Fault]:
    """No output may share memory with another output or an input."""
    faults = []
    for n, (la, a) in enumerate(outputs):
        for lb, b in outputs[n + 1:] + inputs:
            if overlaps(a, b):
                faults.append(value_fault("aliasing", la, lb))
    return faults


def place_shared(memory: Memory, values: list, dtype, overlap: bool, rng) -> list:
    """C-contiguous views of one buffer, one after the other (a few elements
    apart), or with the last one starting inside the one before."""
    dtype = np.dtype(dtype)
    sizes = [int(np.prod(v.shape, dtype=np.int64)) for v in values]
    starts, at = [], 0
    for i, size in enumerate(sizes):
        if overlap and i == len(sizes) - 1 and i > 0 and sizes[i - 1]:
            at = max(0, at - int(rng.integers(1, sizes[i - 1] + 1)))
        starts.append(at)
        at += size + int(rng.integers(0, 3))
    end = max((s + n for s, n in zip(starts, sizes)), default=0)
    buf = memory.buffer(end * dtype.itemsize + 16)
    base = memory.aligned_start(buf)
    out = []
    for v, start in zip(values, starts):
        a = np.ndarray(v.shape, dtype, buffer=buf, offset=base + start * dtype.itemsize)
        with np.errstate(all="ignore"):
            a[...] = v
        out.append(a)
    return out


# -- the kernels ------------------------------------------------------------------------

def state_shape(rule: str, k: int, shape: tuple) -> tuple:
    """Adafactor's r, c: shape[:-1] and shape[:-2] + shape[-1:] (0-d below rank 2)."""
    if rule == "adafactor" and k < 2:
        if len(shape) < 2:
            return ()
        return shape[:-1] if k == 0 else shape[:-2] + shape[-1:]
    return shape


def initial_states(rule: str, params, rng) -> dict:
    """Keras's initial slot values for `rule` (as its optimizer builds them)."""
    out = {}
    for k, name in enumerate(F.RULES[rule]["states"]):
        arrays = []
        for p in params:
            shape = state_shape(rule, k, p.shape)
            if name == "accumulator":
                arrays.append(np.full(shape, 0.1 + rng.random()))
            elif rule == "schedule_free_adamw" and name == "momentum":
                arrays.append(np.array(p, np.float64))
            else:
                arrays.append(np.zeros(shape))
        out[name] = arrays
    return out


KERNEL_FAULT_KINDS = ["array"] * 5 + ["scalar", "step", "hyper", "unknown-hyper", "missing-hyper",
                                      "structure", "aliasing"]
STRUCTURE_FAULTS = ["params-not-list", "params-array", "grads-not-list", "grads-generator", "grads-short",
                    "grads-long", "state-short", "state-not-list", "too-few-states", "too-many-states"]
ALIAS_FAULTS = ["grad-is-param", "state-is-param", "state-is-grad", "state-is-state", "param-is-param",
                "params-overlap"]
# Valid variations: read-only grads, tuples for lists, one grad array for
# several params, params or grads as adjacent views of one buffer.
VARIATIONS = ["read-only-grads", "tuples", "grad-reused", "params-adjacent", "grads-adjacent", "offset-views"]


def kernel_keys(rule: str, n: int) -> list:
    return [(role, k, i) for i in range(n)
            for role, k in [("params", 0), ("grads", 0)] + [("state", k) for k in range(len(F.RULES[rule]["states"]))]]


@st.composite
def kernel_call(draw, misaligned: bool = False, non_finite: bool = False, hard_scalar: bool = False,
                empty_matrices: bool = False):
    """Everything one kernel call is made of. Without options: finite values,
    plausible states, now and then a fault. Else exactly one thing out of the
    ordinary and nothing wrong besides: `misaligned`, one misaligned array;
    `non_finite`, NaN, +-Inf and +-0 in some params, grads and states;
    `hard_scalar`, one scalar from HARD_SCALARS; `empty_matrices`, Adafactor
    over matrices with no rows or no columns."""
    rule = draw(st.sampled_from(["adafactor"] if empty_matrices else RULE_NAMES), label="rule")
    dtype = draw(st.sampled_from(FLOAT_DTYPES), label="dtype")
    n = draw(st.sampled_from([1, 2, 3, 1, 2, 3, 4, 0]), label="num_tensors")
    shape_list = [draw(shapes(), label=f"shape[{i}]") for i in range(n)]
    if empty_matrices:
        n = max(n, 1)
        shape_list = [draw(st.tuples(st.integers(0, 3), st.integers(0, 3)).filter(lambda s: 0 in s).flatmap(
            lambda s: st.sampled_from([s, (2,) + s])), label="empty matrix")] + shape_list[1:n]
    elif rule == "adafactor":  # empty matrices: test_adafactor_statistics_of_empty_matrices
        shape_list = [s[:-2] + tuple(max(d, 1) for d in s[-2:]) if len(s) >= 2 else s for s in shape_list]
    kinds = st.sampled_from(["normal", "special"]) if non_finite else VALUE_KINDS
    values = {("params", 0, i): draw(kinds) for i in range(n)}
    values.update({("grads", 0, i): draw(kinds) for i in range(n)})
    values.update({("state", k, i): draw(st.sampled_from(["warm", "special"])) if non_finite else "warm"
                   for i in range(n) for k in range(len(F.RULES[rule]["states"]))})
    hyper = {}
    for name in F.RULES[rule]["hyper"]:
        if name in KERNEL_DEFAULTS[rule] and draw(st.booleans()):
            continue  # the kernel's default
        valid = VALID_HYPER_FOR.get((rule, name), VALID_HYPER[name])
        hyper[name] = Scalar(draw(as_number_types(valid), label=name))
    lr_valid = FTRL_LEARNING_RATES if rule == "ftrl" else float_in(0.0, 1.0, [0.0, 0.01])
    zero_mostly = st.one_of(st.just(0.0), st.just(0.0), float_in(0.0, 0.05))
    scalars = {"learning_rate": draw(as_number_types(lr_valid), label="learning_rate"),
               "weight_decay": draw(as_number_types(st.one_of(st.just(0.0), float_in(0.0, 0.5))),
                                    label="weight_decay")}
    for name in ("l1", "l2", "proximal_l1"):
        scalars[name] = draw(as_number_types(zero_mostly), label=name)
    plan = dict(rule=rule, dtype=dtype, shapes=shape_list, values=values, hyper=hyper, scalars=scalars,
                step=draw(st.one_of(st.integers(1, 20), st.just(2**40), st.just(np.int64(7)), st.just(True)),
                          label="step"),
                warmup=draw(st.integers(0, 2), label="warmup_steps"),
                variation=draw(mostly(None, VARIATIONS, 10), label="variation"),
                seed=draw(st.integers(0, 2**32 - 1), label="seed"),
                threads=draw(st.integers(1, 3), label="threads"),
                isa=draw(st.sampled_from(ISAS), label="isa"))
    if non_finite or empty_matrices:
        plan["faults"] = []
        return plan
    if hard_scalar:
        names = list(scalars) + list(F.RULES[rule]["hyper"])
        name = draw(st.sampled_from(names), label="scalar")
        kind = "scalar" if name in scalars else "hyper"
        plan["faults"] = [{"kind": kind, "name": name, "value": draw(hard_scalars())}]
        return plan
    if misaligned:
        plan["faults"] = [{"kind": "array", "array": draw(array_fault(kernel_keys(rule, n), ["misaligned"]))}] \
            if n else []
        return plan
    faults = []
    for _ in range(draw(mostly(0, [1] * 8 + [2], 10), label="num_faults")):
        kind = draw(st.sampled_from(KERNEL_FAULT_KINDS))
        if kind == "array":
            f = draw(array_fault(kernel_keys(rule, n)))
            if f is not None:
                faults.append({"kind": "array", "array": f})
        elif kind == "scalar":
            faults.append({"kind": "scalar", "name": draw(st.sampled_from(list(scalars))), "value": draw(bad_scalar())})
        elif kind == "step":
            bad_steps = [0, -3, 2**63, 1.5, "2", None, np.float64(2)]
            faults.append({"kind": "step", "value": draw(st.sampled_from(bad_steps))})
        elif kind == "hyper" and F.RULES[rule]["hyper"]:
            faults.append({"kind": "hyper", "name": draw(st.sampled_from(F.RULES[rule]["hyper"])),
                           "value": draw(bad_scalar())})
        elif kind == "unknown-hyper":
            faults.append({"kind": "hyper", "name": draw(st.sampled_from(["bogus", "lr", "beta1"])),
                           "value": Scalar(0.5)})
        elif kind == "missing-hyper" and rule == "nadam":
            faults.append({"kind": "missing-hyper"})
        elif kind == "structure":
            faults.append({"kind": "structure", "what": draw(st.sampled_from(STRUCTURE_FAULTS))})
        elif kind == "aliasing" and n:
            faults.append({"kind": "aliasing", "what": draw(st.sampled_from(ALIAS_FAULTS)),
                           "i": draw(st.integers(0, n - 1)), "j": draw(st.integers(0, n - 1))})
    plan["faults"] = faults
    return plan


def build_kernel_call(plan: dict):
    """The arrays (in guarded buffers) and arguments of the call."""
    rule, n, dtype = plan["rule"], len(plan["shapes"]), plan["dtype"]
    names = F.RULES[rule]["states"]
    memory = Memory(plan["seed"])
    rng = np.random.default_rng(plan["seed"] + 1)
    array_fault_ = next((f["array"] for f in plan["faults"] if f["kind"] == "array"), None)
    # Plausible state: Keras's initial slots after 0-2 reference steps.
    p0 = [random_values(rng, s, plan["values"][("params", 0, i)]) for i, s in enumerate(plan["shapes"])]
    warm = KernelReference(rule, {**KERNEL_DEFAULTS[rule], "u_product": 0.5,
                                  **{k: v.value for k, v in plan["hyper"].items()}},
                           p0, initial_states(rule, p0, rng))
    for t in range(1, plan["warmup"] + 1):
        warm.call([rng.standard_normal(s) for s in plan["shapes"]], 0.05, t, 0.0)
    values = {}
    for i, s in enumerate(plan["shapes"]):
        values[("params", 0, i)] = warm.params[i]
        values[("grads", 0, i)] = random_values(rng, s, plan["values"][("grads", 0, i)])
        for k, name in enumerate(names):
            v = warm.slots[name][i]
            if plan["values"][("state", k, i)] == "special":
                v = sprinkle(rng, v, specials(name in NONNEGATIVE_STATES))
            values[("state", k, i)] = v

    variation = plan["variation"]
    layout = "offset" if variation == "offset-views" else "c"

    def make(key):
        return make_array(memory, values[key], dtype, array_fault_, key, rng, layout)

    def make_group(role, adjacent: bool, overlap: bool):
        keys = [(role, 0, i) for i in range(n)]
        if (adjacent or overlap) and n >= 2 and not (array_fault_ and array_fault_["key"] in keys):
            return place_shared(memory, [values[k] for k in keys], dtype, overlap, rng)
        return [make(k) for k in keys]

    aliases = [f for f in plan["faults"] if f["kind"] == "aliasing"]
    params = make_group("params", variation == "params-adjacent",
                        any(f["what"] == "params-overlap" for f in aliases))
    grads = make_group("grads", variation == "grads-adjacent", False)
    states = [[make(("state", k, i)) for i in range(n)] for k in range(len(names))]
    if variation == "read-only-grads":
        for g in grads:
            if isinstance(g, np.ndarray):
                g.flags.writeable = False
    if variation == "grad-reused" and n >= 2:
        for i in range(1, n):
            if plan["shapes"][i] == plan["shapes"][0] and isinstance(grads[0], np.ndarray):
                grads[i] = grads[0]
    for f in aliases:
        i, j, what = f["i"], f["j"], f["what"]
        if what == "grad-is-param":
            grads[i] = params[j]
        elif what == "param-is-param" and n >= 2:
            params[i] = params[(i + 1) % n]
        elif names and what == "state-is-param":
            states[j % len(names)][i] = params[j]
        elif names and what == "state-is-grad":
            states[j % len(names)][i] = grads[j]
        elif len(names) >= 2 and what == "state-is-state":
            states[0][i] = states[1][j]
    for x in params + [s for group in states for s in group]:
        if isinstance(x, np.ndarray):
            memory.outputs.append(x)
    args = restructure(plan, params, grads, states)
    return memory, (params, grads, states), args


def restructure(plan, params, grads, states):
    """The positional arguments, with the plan's list-level faults applied."""
    states = [list(s) for s in states]
    tuples = plan["variation"] == "tuples"
    if tuples:
        params, grads, states = tuple(params), tuple(grads), [tuple(s) for s in states]
    for f in plan["faults"]:
        if f["kind"] != "structure":
            continue
        what = f["what"]
        if what == "params-not-list":
            params = None
        elif what == "params-array":
            params = params[0] if len(params) and isinstance(params[0], np.ndarray) else np.zeros(3)
        elif what == "grads-not-list":
            grads = "grads"
        elif what == "grads-generator":
            grads = (g for g in grads)
        elif what == "grads-short":
            grads = list(grads)[:-1] if len(grads) else [np.zeros(1)]
        elif what == "grads-long":
            grads = list(grads) + [np.zeros(3, np.float32)]
        elif what == "state-short" and states:
            states[0] = list(states[0])[:-1] if len(states[0]) else [np.zeros(1)]
        elif what == "state-not-list" and states:
            states[-1] = states[-1][0] if len(states[-1]) else 7
        elif what == "too-few-states":
            states = states[:-1] if states else None
        elif what == "too-many-states":
            states = states + [list(states[0]) if states else []]
    return [params, grads] + ([] if states is None else states)


def kernel_kwargs(plan: dict) -> dict:
    kwargs = {**plan["scalars"], "step": plan["step"], **{k: v.value for k, v in plan["hyper"].items()}}
    for f in plan["faults"]:
        if f["kind"] in ("scalar", "hyper"):
            kwargs[f["name"]] = f["value"].value
        elif f["kind"] == "step":
            kwargs["step"] = f["value"]
        elif f["kind"] == "missing-hyper":
            kwargs.pop("u_product", None)
    return kwargs


def kernel_faults(rule: str, dtype, args: list, kwargs: dict) -> list[Fault]:
    """What is wrong with a kernel call, from its arguments alone."""
    names = F.RULES[rule]["states"]
    faults = []
    lr_ok = (lambda x: x > 0) if rule == "ftrl" else nonnegative
    faults += scalar_fault("learning_rate", kwargs["learning_rate"], lr_ok)
    for name in ("weight_decay", "l1", "l2", "proximal_l1"):
        faults += scalar_fault(name, kwargs[name], nonnegative)
    step = kwargs["step"]
    if not isinstance(step, (int, np.integer)):  # bool included: an int to the engine
        faults.append(type_fault("step-type", "step"))
    elif int(step) >= 2**63:
        faults.append(either_fault("step-range", "step"))
    elif int(step) < 1:
        faults.append(value_fault("step-range", "step"))
    base = {"learning_rate", "step", "weight_decay", "l1", "l2", "proximal_l1"}
    for name, v in kwargs.items():
        if name in base:
            continue
        if name not in F.RULES[rule]["hyper"]:
            faults.append(value_fault("unknown-hyper", name))
        else:
            faults += scalar_fault(name, v, kernel_hyper_range(rule, name))
    if rule == "nadam" and "u_product" not in kwargs:
        faults.append(value_fault("missing-hyper", "u_product"))
    if len(args) != 2 + len(names):
        return faults + [type_fault("states-count", f"{rule}_")]
    params, grads, states = args[0], args[1], args[2:]
    lists = [("params", params), ("grads", grads)] + list(zip(names, states))
    bad_lists = [type_fault("not-a-list", name) for name, xs in lists
                 if isinstance(xs, np.ndarray) or not isinstance(xs, (list, tuple))]
    if bad_lists:
        return faults + bad_lists
    n = len(params)
    lengths = [value_fault("list-length", name) for name, xs in lists[1:] if len(xs) != n]
    if lengths:
        return faults + lengths
    for i, p in enumerate(params):
        shape = p.shape if isinstance(p, np.ndarray) else None
        faults += array_faults(f"params[{i}]", p, dtype, None, True)
        faults += array_faults(f"grads[{i}]", grads[i], dtype, shape, False)
        for k, name in enumerate(names):
            want = None if shape is None else state_shape(rule, k, shape)
            faults += array_faults(f"{name}[{i}]", states[k][i], dtype, want, True)
    outputs = [(f"params[{i}]", p) for i, p in enumerate(params)]
    outputs += [(f"{name}[{i}]", s) for name, group in zip(names, states) for i, s in enumerate(group)]
    return faults + aliasing_faults(outputs, [(f"grads[{i}]", g) for i, g in enumerate(grads)])


def run_kernel_example(plan: dict, test: str) -> None:
    rule, dtype = plan["rule"], plan["dtype"]
    names = F.RULES[rule]["states"]
    memory, (params, grads, states), args = build_kernel_call(plan)
    kwargs = kernel_kwargs(plan)
    faults = kernel_faults(rule, dtype, args, kwargs)
    note(f"faults: {shown(faults)}")
    trace(describe(test=test, plan=plan, faults=faults))
    fusedopt.set_num_threads(plan["threads"])
    _core.set_isa(plan["isa"])
    inputs = None
    if not faults:  # float64 copies before the call writes
        inputs = ([np.array(p, np.float64) for p in params], [np.array(g, np.float64) for g in grads],
                  {name: [np.array(s, np.float64) for s in group] for name, group in zip(names, states)})

    def reference(in_dtype, nudge=None) -> list:
        """params and every state after the call, computed in `in_dtype`
        (from inputs moved by `nudged` with the generator `nudge`)."""
        p0, g0, s0 = inputs
        if nudge is not None:
            p0, g0 = [nudged(p, nudge) for p in p0], [nudged(g, nudge) for g in g0]
            s0 = {k: [nudged(x, nudge) for x in v] for k, v in s0.items()}
        hyper = {**KERNEL_DEFAULTS[rule], **{k: v for k, v in kwargs.items() if k in F.RULES[rule]["hyper"]}}
        ref = KernelReference(rule, hyper, p0, s0, dtype=in_dtype)
        lr = float(kwargs["learning_rate"])
        with np.errstate(all="ignore"):
            ref.call(g0, lr, int(kwargs["step"]), float(kwargs["weight_decay"]) * lr,
                     float(kwargs["l1"]), float(kwargs["l2"]), float(kwargs["proximal_l1"]))
        return [ref.params] + [ref.slots[name] for name in names]

    def check(_):
        if not params:
            return
        assert_call_matches([params] + list(states), ["params"] + list(names), reference, dtype, plan["seed"], rule)

    kernel = getattr(F, f"{rule}_")
    expect_outcome(lambda: kernel(*args, **kwargs), faults, memory, check)


@fuzz_settings(900)
@given(kernel_call())
def test_kernels_match_reference_or_reject(plan):
    run_kernel_example(plan, "kernels")


@fuzz_settings(200)
@given(kernel_call(non_finite=True))
def test_kernels_propagate_non_finite_values_like_keras(plan):
    """NaN and infinities in params, grads and states give what the float64
    reference (NumPy's, as Keras's ops: NaN propagates through sign, maximum,
    minimum) gives."""
    run_kernel_example(plan, "kernels, non-finite values")


@fuzz_settings(60)
@given(kernel_call(empty_matrices=True))
def test_adafactor_statistics_of_empty_matrices(plan):
    """Adafactor over a matrix with no rows or no columns: nothing is
    updated, its row and column statistics included (a documented deviation:
    Keras's ops.mean over no elements makes them NaN), nothing is written
    outside them and no call crashes."""
    run_kernel_example(plan, "kernels, Adafactor over empty matrices")


@fuzz_settings(80)
@given(kernel_call(hard_scalar=True))
def test_kernel_scalars_that_do_not_convert(plan):
    """An int too large for a double is not finite (ValueError, not
    OverflowError); a NumPy array of one or two values is not a number
    (TypeError naming the argument, not NumPy's unnamed error)."""
    run_kernel_example(plan, "kernels, scalars that do not convert")


@fuzz_settings(150)
@given(kernel_call(misaligned=True))
def test_kernels_reject_misaligned_arrays(plan):
    """An array whose data is not aligned to its dtype (a view at an odd
    byte offset of a buffer) is undefined behaviour in C++: rejected with
    nothing written."""
    run_kernel_example(plan, "kernels, misaligned")


# -- the optimizers ----------------------------------------------------------------------

def beta(x):  # [0, 1)
    return 0.0 <= x < 1.0


# Every constructor argument that takes a number: (range test, None allowed),
# from each optimizer's documented (Keras's) ranges.
COMMON_ARGS = {
    "learning_rate": (nonnegative, False), "weight_decay": (nonnegative, True),
    "clipnorm": (lambda x: x > 0, True), "clipvalue": (lambda x: x > 0, True),
    "global_clipnorm": (lambda x: x > 0, True),
    "l1": (nonnegative, False), "l2": (nonnegative, False), "proximal_l1": (nonnegative, False),
}
ADAM_ARGS = {"beta_1": (beta, False), "beta_2": (beta, False), "epsilon": (nonnegative, False)}
OPTIMIZER_ARGS = {
    "SGD": {"momentum": (lambda x: 0 <= x <= 1, False)},
    "RMSprop": {"rho": (beta, False), "momentum": (beta, False), "epsilon": (nonnegative, False)},
    "Adagrad": {"initial_accumulator_value": (nonnegative, False), "epsilon": (nonnegative, False)},
    "Adadelta": {"rho": (beta, False), "epsilon": (nonnegative, False)},
    "Adam": ADAM_ARGS, "AdamW": ADAM_ARGS, "Adamax": ADAM_ARGS, "Nadam": ADAM_ARGS, "Lamb": ADAM_ARGS,
    "Ftrl": {"learning_rate_power": (lambda x: x <= 0, False),
             "initial_accumulator_value": (nonnegative, False),
             "l1_regularization_strength": (nonnegative, False),
             "l2_regularization_strength": (nonnegative, False),
             "l2_shrinkage_regularization_strength": (nonnegative, False), "beta": (nonnegative, False)},
    "Lion": {"beta_1": (lambda x: 0 < x <= 1, False), "beta_2": (beta, False)},
    "Adafactor": {"beta_2_decay": (lambda x: x <= 0, False), "epsilon_1": (nonnegative, False),
                  "epsilon_2": (nonnegative, False), "clip_threshold": (lambda x: x > 0, False)},
    "ScheduleFreeAdamW": {"beta_1": (lambda x: 0 < x < 1, False), "beta_2": (beta, False),
                          "epsilon": (nonnegative, False), "warmup_steps": (nonnegative, False)},
    "Adan": {**ADAM_ARGS, "beta_3": (beta, False)},
    "Muon": {"adam_beta_1": (beta, False), "adam_beta_2": (beta, False),
             "adam_weight_decay": (nonnegative, False), "epsilon": (nonnegative, False),
             "muon_a": (lambda x: True, False), "muon_b": (lambda x: True, False),
             "muon_c": (lambda x: True, False), "adam_lr_ratio": (lambda x: x > 0, False),
             "momentum": (beta, False), "ns_steps": (nonnegative, False), "rms_rate": (nonnegative, True)},
}
# Values the comparisons run on.
VALID_ARGS = {
    "learning_rate": float_in(0.0, 0.1, [0.01]), "weight_decay": st.sampled_from([None, 0.0, 0.01, 0.1]),
    "clipnorm": float_in(0.05, 5.0), "clipvalue": float_in(0.05, 2.0), "global_clipnorm": float_in(0.05, 5.0),
    "l1": float_in(0.0, 0.01), "l2": float_in(0.0, 0.01), "proximal_l1": float_in(0.0, 0.01),
    "momentum": float_in(0.0, 0.99, [0.0, 0.9]), "rho": float_in(0.05, 0.99),
    "epsilon": st.sampled_from([0.0, 1e-7, 1e-3]),
    "beta_1": float_in(0.05, 0.99, [0.9]), "beta_2": float_in(0.0, 0.999, [0.999]),
    "beta_3": float_in(0.0, 0.999, [0.99]), "initial_accumulator_value": float_in(0.05, 1.0), "learning_rate_power": float_in(-1.0, -0.1),
    "l1_regularization_strength": float_in(0.0, 0.1), "l2_regularization_strength": float_in(0.0, 0.1),
    "l2_shrinkage_regularization_strength": float_in(0.0, 0.1), "beta": float_in(0.0, 0.5),
    "beta_2_decay": float_in(-1.0, -0.1), "epsilon_1": st.sampled_from([1e-30, 1e-10]),
    "epsilon_2": st.sampled_from([1e-3, 1e-2]), "clip_threshold": float_in(0.2, 5.0),
    "warmup_steps": st.integers(0, 5), "adam_beta_1": float_in(0.0, 0.99), "adam_beta_2": float_in(0.0, 0.999),
    "adam_weight_decay": float_in(0.0, 0.1), "muon_a": st.just(3.4445), "muon_b": st.just(-4.7750),
    "muon_c": st.just(2.0315), "adam_lr_ratio": float_in(0.1, 2.0), "ns_steps": st.integers(0, 5),
    "rms_rate": st.sampled_from([None, 0.2, 1.0]),
}
CLIP_ARGS = ("clipnorm", "clipvalue", "global_clipnorm")
STEP_FAULTS = ["grads-array"] * 4 + ["grads-structure", "grads-alias", "assign-learning-rate",
                                     "schedule-value"]
GRAD_STRUCTURE_FAULTS = ["not-list", "array", "generator", "dict", "short", "long", "none"]


def optimizer_shapes(kind: str) -> st.SearchStrategy:
    if kind == "muon":  # 2-D (Muon's branch) and other ranks (Adam's)
        return st.one_of(shapes(2, 2), shapes(2, 2), shapes())
    s = shapes()
    if kind == "adafactor":  # empty matrices: test_adafactor_statistics_of_empty_matrices
        s = s.map(lambda t: t[:-2] + tuple(max(d, 1) for d in t[-2:]) if len(t) >= 2 else t)
    return s


@st.composite
def optimizer_run(draw, misaligned: bool = False, hard_scalar: bool = False):
    case = draw(st.sampled_from(CASES), label="case")
    name = case.cls.__name__
    dtype = draw(st.sampled_from(FLOAT_DTYPES), label="dtype")
    n = draw(st.sampled_from([1, 2, 3, 1, 2, 3, 4, 0]), label="num_params")
    shape_list = [draw(optimizer_shapes(case.kind), label=f"shape[{i}]") for i in range(n)]
    overrides = {}
    for arg in draw(st.lists(st.sampled_from(sorted(OPTIMIZER_ARGS[name]) + ["learning_rate"]), max_size=2,
                             unique=True)):
        valid = FTRL_LEARNING_RATES if (name, arg) == ("Ftrl", "learning_rate") else VALID_ARGS[arg]
        if case.kwargs.get("centered") and arg in ("rho", "epsilon"):  # see CENTERED_RHO
            valid = CENTERED_RHO if arg == "rho" else CENTERED_EPSILON
        overrides[arg] = draw(valid, label=arg)
    for arg in ("l1", "l2", "proximal_l1"):
        if draw(mostly(False, [True], 6)):
            overrides[arg] = draw(VALID_ARGS[arg], label=arg)
    clip = draw(mostly(None, list(CLIP_ARGS), 6), label="clip")
    if clip:
        overrides[clip] = draw(VALID_ARGS[clip], label=clip)
    schedule = draw(mostly(False, [True], 4), label="schedule")
    plan = dict(case=case, dtype=dtype, shapes=shape_list, overrides=overrides, schedule=schedule,
                use_adam=None, layout=draw(mostly("c", ["offset", "adjacent"], 6), label="params_layout"),
                seed=draw(st.integers(0, 2**32 - 1), label="seed"),
                threads=draw(st.integers(1, 3), label="threads"), isa=draw(st.sampled_from(ISAS), label="isa"),
                construct_fault=None, steps=[])
    if case.kind == "muon" and n and draw(mostly(False, [True], 4)):
        plan["use_adam"] = [True if len(s) != 2 else draw(st.booleans()) for s in shape_list]
    if misaligned:  # a misaligned param (the constructor) or grad (the step)
        plan["steps"] = [None]
        if n and draw(st.booleans(), label="misaligned param?"):
            plan["construct_fault"] = {"kind": "params-array", "array": draw(array_fault(
                [("params", 0, i) for i in range(n)], ["misaligned"]))}
        elif n:
            plan["steps"] = [{"kind": "grads-array", "array": draw(array_fault(
                [("grads", 0, i) for i in range(n)], ["misaligned"]))}]
        return plan
    if hard_scalar:
        arg = draw(st.sampled_from(sorted({**COMMON_ARGS, **OPTIMIZER_ARGS[name]})), label="argument")
        plan["construct_fault"] = {"kind": "argument", "arg": arg, "value": draw(hard_scalars())}
        plan["steps"] = [None]
        return plan
    if draw(mostly(False, [True], 7), label="construct_fault?"):
        kind = draw(st.sampled_from(["params-array", "params-array", "argument", "argument", "two-clips",
                                     "params-structure", "params-alias", "use-adam", "sgd-flags"]))
        fault = {"kind": kind}
        if kind == "params-array":
            fault["array"] = draw(array_fault([("params", 0, i) for i in range(n)]))
        elif kind == "argument":
            fault["arg"] = draw(st.sampled_from(sorted({**COMMON_ARGS, **OPTIMIZER_ARGS[name]})))
            fault["value"] = draw(st.one_of(bad_scalar(), st.just(Scalar(True, "type", "bool"))))
        elif kind == "two-clips":
            fault["args"] = draw(st.lists(st.sampled_from(CLIP_ARGS), min_size=2, max_size=2, unique=True))
        elif kind == "params-structure":
            fault["what"] = draw(st.sampled_from(["not-list", "array", "none", "string"]))
        elif kind == "params-alias":
            fault["what"] = draw(st.sampled_from(["same-twice", "overlap"]))
        elif kind == "use-adam":
            fault["what"] = draw(st.sampled_from(["short", "false-for-non-matrix"]))
        elif kind == "sgd-flags":
            fault["what"] = draw(st.sampled_from(["dampened-nesterov", "dampened-momentum-1"]))
        plan["construct_fault"] = fault
    for _ in range(draw(st.integers(1, 3), label="num_steps")):
        step = None
        if draw(mostly(False, [True], 5)):
            kind = draw(st.sampled_from(STEP_FAULTS))
            step = {"kind": kind}
            if kind == "grads-array":
                step["array"] = draw(array_fault([("grads", 0, i) for i in range(n)]))
            elif kind == "grads-structure":
                step["what"] = draw(st.sampled_from(GRAD_STRUCTURE_FAULTS))
            elif kind == "grads-alias":
                step["what"] = draw(st.sampled_from(["param", "slot", "overlap"]))
                step["i"] = draw(st.integers(0, max(0, n - 1)))
            elif kind in ("assign-learning-rate", "schedule-value"):
                step["value"] = draw(bad_scalar())
        plan["steps"].append(step)
    return plan


def optimizer_construct_faults(plan, name, params, kwargs) -> list[Fault]:
    """What the constructor must refuse."""
    faults = []
    ranges = {**COMMON_ARGS, **OPTIMIZER_ARGS[name]}
    for arg, value in kwargs.items():
        if arg in ranges and not (arg == "learning_rate" and callable(value)):
            ok, none_ok = ranges[arg]
            faults += scalar_fault(arg, value, ok, bool_ok=False, none_ok=none_ok)
    if kwargs.get("clipnorm") is not None and kwargs.get("global_clipnorm") is not None:
        faults.append(value_fault("two-clips", "clipnorm", "global_clipnorm"))
    if name == "SGD" and kwargs.get("dampened") and (kwargs.get("nesterov") or kwargs.get("momentum", 0.0) == 1.0):
        faults.append(value_fault("sgd-flags", "dampened", "momentum"))
    if name == "ScheduleFreeAdamW" and kwargs.get("beta_1", 0.9) == 0:
        faults.append(value_fault("scalar-range", "beta_1"))
    if isinstance(params, np.ndarray) or not isinstance(params, (list, tuple)):
        return faults + [type_fault("not-a-list", "params")]
    good = [p for p in params if isinstance(p, np.ndarray) and p.dtype in FLOAT_DTYPES]
    dtype = params[0].dtype if params and isinstance(params[0], np.ndarray) else plan["dtype"]
    for i, p in enumerate(params):
        faults += array_faults(f"params[{i}]", p, dtype if dtype in FLOAT_DTYPES else plan["dtype"], None, True)
    if name == "Muon" and "use_adam" in kwargs and kwargs["use_adam"] is not None:
        use_adam = kwargs["use_adam"]
        if len(use_adam) != len(params):
            faults.append(value_fault("use-adam", "use_adam"))
        else:
            faults += [value_fault("use-adam", f"use_adam[{i}]") for i, (a, p) in enumerate(zip(use_adam, params))
                       if not a and isinstance(p, np.ndarray) and p.ndim != 2]
    del good
    return faults


def clip_gradients(grads: list, kwargs: dict) -> list:
    """Clipping as fusedopt documents it (Optimizer._clip): clipvalue, then
    clipnorm per tensor or global_clipnorm, each as Keras computes it. (Keras
    itself refuses more than one of the three; fusedopt only clipnorm with
    global_clipnorm.)"""
    if kwargs.get("clipvalue") is not None:
        v = kwargs["clipvalue"]
        grads = [np.clip(g, -v, v) for g in grads]
    if kwargs.get("clipnorm") is not None:
        c = kwargs["clipnorm"]
        grads = [g * c / np.maximum(np.sqrt(np.sum(g * g)), c) for g in grads]
    if kwargs.get("global_clipnorm") is not None:
        c = kwargs["global_clipnorm"]
        norm = np.sqrt(sum(np.sum(g * g) for g in grads)) if grads else np.float64(0.0)
        with np.errstate(divide="ignore"):
            scale = c * np.minimum(1.0 / np.float64(norm), 1.0 / c)
        grads = [g * g.dtype.type(scale) for g in grads]
    return grads


def reference_step(ref: Reference, grads, kwargs: dict) -> None:
    """One optimizer step in the reference: Keras's clipping, the coupled
    L1/L2 gradient, the rule (with its decay), the proximal threshold at the
    rate of each param's update (Muon's Adam params: lr * adam_lr_ratio)."""
    lr = ref.learning_rate()
    grads = clip_gradients([np.asarray(g, ref.dtype) for g in grads], kwargs)
    l1, l2, prox = (kwargs.get(k, 0.0) for k in ("l1", "l2", "proximal_l1"))
    grads = [g + (l1 * np.sign(p) if l1 else 0) + (2 * l2 * p if l2 else 0) for g, p in zip(grads, ref.params)]
    ref.step(grads)
    if prox:
        for i, p in enumerate(ref.params):
            rate = lr * ref.h["adam_lr_ratio"] if ref.name == "Muon" and ref.use_adam[i] else lr
            p[...] = np.sign(p) * np.maximum(np.abs(p) - rate * prox, 0.0)


class Schedule:
    """base * 0.9**step; `bad[0]`, while `bad` is set, instead."""

    def __init__(self, base: float) -> None:
        self.base, self.bad = base, None

    def __call__(self, step):
        return self.bad[0] if self.bad is not None else self.base * 0.9 ** step

    def __repr__(self) -> str:
        return f"Schedule({self.base})"


def run_optimizer_example(plan: dict, test: str) -> None:
    case, dtype, n = plan["case"], plan["dtype"], len(plan["shapes"])
    name = case.cls.__name__
    memory = Memory(plan["seed"])
    rng = np.random.default_rng(plan["seed"] + 1)
    fusedopt.set_num_threads(plan["threads"])
    _core.set_isa(plan["isa"])
    kwargs = {**case.kwargs, **plan["overrides"]}
    if plan["use_adam"] is not None:
        kwargs["use_adam"] = plan["use_adam"]
    cf = plan["construct_fault"] or {}
    values = [random_values(rng, s, "normal") for s in plan["shapes"]]
    array_f = cf.get("array") if cf.get("kind") == "params-array" else None
    if plan["layout"] == "adjacent" and n >= 2 and array_f is None:
        params = place_shared(memory, values, dtype, cf.get("what") == "overlap", rng)
    else:
        params = [make_array(memory, v, dtype, array_f, ("params", 0, i), rng,
                             "offset" if plan["layout"] == "offset" else "c") for i, v in enumerate(values)]
    if cf.get("kind") == "params-alias" and n >= 2 and cf["what"] == "same-twice":
        params[1] = params[0]
    if cf.get("kind") == "argument":
        kwargs[cf["arg"]] = cf["value"].value
    elif cf.get("kind") == "two-clips":
        kwargs.update({a: 1.0 for a in cf["args"]})
    elif cf.get("kind") == "use-adam" and name == "Muon":
        use_adam = [len(s) != 2 for s in plan["shapes"]]
        kwargs["use_adam"] = use_adam[:-1] if cf["what"] == "short" else [False] * n
    elif cf.get("kind") == "sgd-flags" and name == "SGD":
        kwargs.update(dampened=True, momentum=kwargs.get("momentum") or 0.5)
        kwargs.update(nesterov=True) if cf["what"] == "dampened-nesterov" else kwargs.update(momentum=1.0)
    bad_at = {t: f["value"].value for t, f in enumerate(plan["steps"])
              if f is not None and f["kind"] == "schedule-value"}
    sched = None
    lr_fault = cf.get("kind") == "argument" and cf["arg"] == "learning_rate"  # it must reach the constructor
    if (plan["schedule"] or bad_at) and not lr_fault:
        sched = kwargs["learning_rate"] = Schedule(float(kwargs.get("learning_rate", 0.01)))
    params_arg = params
    if cf.get("kind") == "params-structure":
        params_arg = {"not-list": 3.0, "array": params[0] if params else np.zeros(2), "none": None,
                      "string": "params"}[cf["what"]]
    faults = optimizer_construct_faults(plan, name, params_arg, kwargs)
    note(f"constructor faults: {shown(faults)}")
    trace(describe(test=test, plan=plan, stage="constructor", faults=faults))
    built = {}

    def construct():
        built["opt"] = case.cls(params_arg, **kwargs)

    if expect_outcome(construct, faults, memory, lambda _: None) == "rejected":
        return
    opt = built["opt"]
    dtype = params[0].dtype if params else dtype  # float64 params in a float32 plan are fine
    for group in opt.slots.values():
        for a in group:
            if a is not None:
                memory.adopt(a)
                memory.outputs.append(a)
    memory.outputs += [p for p in params]
    # Rejected at every step: params that share memory (the engine's aliasing check).
    shared = aliasing_faults([(f"params[{i}]", p) for i, p in enumerate(params)], [])
    ref_kwargs = {k: v for k, v in kwargs.items() if k != "use_adam"}
    use_adam = kwargs.get("use_adam")
    exact = Reference(name, ref_kwargs, [np.array(p, np.float64) for p in params], use_adam=use_adam)
    low = Reference(name, ref_kwargs, [np.array(p, np.float32) for p in params], use_adam=use_adam, dtype=np.float32)
    for t, step_fault in enumerate(plan["steps"]):
        sf = step_fault or {}
        gvalues = [random_values(rng, s, "normal") for s in plan["shapes"]]
        grads = [make_array(memory, v, dtype, sf.get("array"), ("grads", 0, i), rng) for i, v in enumerate(gvalues)]
        step_faults = list(shared)
        grads_arg = grads
        kind = sf.get("kind")
        if kind == "grads-structure":
            grads_arg = {"not-list": "grads", "array": grads[0] if grads else np.zeros(1),
                         "generator": (g for g in grads),
                         "dict": dict(enumerate(grads)), "short": grads[:-1] if grads else [np.zeros(1)],
                         "long": grads + [np.zeros(1, dtype)], "none": None}[sf["what"]]
        elif kind == "grads-alias" and n:
            i = sf["i"]
            if sf["what"] == "param":
                grads_arg = grads[:i] + [params[i]] + grads[i + 1:]
            elif sf["what"] == "slot":
                slot = next((v[i] for v in opt.slots.values()
                             if v[i] is not None and v[i].shape == params[i].shape), None)
                if slot is not None:
                    grads_arg = grads[:i] + [slot] + grads[i + 1:]
            elif sf["what"] == "overlap" and plan["layout"] == "adjacent" and i >= 1 and params[i].size:
                start = address(params[i]) - address(params[i - 1]) - params[0].itemsize
                base = np.ndarray((params[i].size,), dtype, buffer=params[i - 1].base,
                                  offset=address(params[i - 1]) - address(params[i - 1].base) + start)
                grads_arg = grads[:i] + [base.reshape(params[i].shape)] + grads[i + 1:]
        # What the step must refuse.
        if isinstance(grads_arg, np.ndarray) or not isinstance(grads_arg, (list, tuple)):
            step_faults.append(type_fault("not-a-list", "grads"))
        elif len(grads_arg) != len(params):
            step_faults.append(value_fault("list-length", "grads"))
        else:
            for i, (g, p) in enumerate(zip(grads_arg, params)):
                step_faults += array_faults(f"grads[{i}]", g, dtype, p.shape, False)
            outputs = [(f"params[{i}]", p) for i, p in enumerate(params)]
            outputs += [(f"{k}[{i}]", a) for k, v in opt.slots.items() for i, a in enumerate(v) if a is not None]
            step_faults += [f for f in aliasing_faults(outputs, [(f"grads[{i}]", g) for i, g in enumerate(grads_arg)])
                            if any(nm.startswith("grads") for nm in f.names)]
        if t in bad_at and sched is not None:
            sched.bad = (bad_at[t],)
            step_faults += scalar_fault("learning_rate", bad_at[t], nonnegative, bool_ok=False)
        elif name == "Ftrl" and float(exact.learning_rate()) == 0.0:
            step_faults.append(value_fault("scalar-range", "learning_rate"))
        note(f"step {t} faults: {shown(step_faults)}")
        trace(describe(test=test, plan=plan, stage=f"step {t}", faults=step_faults))
        if kind == "assign-learning-rate":
            value = sf["value"].value
            lr_faults = scalar_fault("learning_rate", value, nonnegative, bool_ok=False)
            before = (opt.iterations, dict(opt.state_dict()["extra"]))

            def assign():
                opt.learning_rate = value

            if expect_outcome(assign, lr_faults, memory, lambda _: None) == "valid":
                exact.h["learning_rate"] = low.h["learning_rate"] = value
            assert (opt.iterations, opt.state_dict()["extra"]) == before
            continue
        iterations, extra = opt.iterations, dict(opt.state_dict()["extra"])

        def check(_):
            with quiet():
                reference_step(exact, gvalues, kwargs)
                reference_step(low, [g.astype(np.float32) for g in gvalues], kwargs)
            assert opt.iterations == iterations + 1 == exact.iterations
            assert_matches(params, exact.params, dtype, f"step {t}: params",
                           spread_of(exact.params, low.params, dtype), where=case.id)
            for slot in opt.slots:
                assert_matches(opt.slots[slot], exact.slots[slot], dtype, f"step {t}: {slot}",
                               spread_of(exact.slots[slot], low.slots[slot], dtype), where=case.id)
            if name == "Nadam":
                np.testing.assert_allclose(opt.state_dict()["extra"]["u_product"], exact.u_product, rtol=1e-12)

        outcome = expect_outcome(lambda: opt.step(grads_arg), step_faults, memory, check)
        if sched is not None:
            sched.bad = None
        if outcome == "rejected":
            assert opt.iterations == iterations and opt.state_dict()["extra"] == extra, "rejected step moved the state"


@fuzz_settings(700)
@given(optimizer_run())
def test_optimizers_match_reference_or_reject(plan):
    run_optimizer_example(plan, "optimizers")


@fuzz_settings(100)
@given(optimizer_run(misaligned=True))
def test_optimizers_reject_misaligned_arrays(plan):
    """A misaligned param (UB in C++) is refused by the constructor, a
    misaligned grad by the step, with nothing written."""
    run_optimizer_example(plan, "optimizers, misaligned")


@fuzz_settings(60)
@given(optimizer_run(hard_scalar=True))
def test_optimizer_scalars_that_do_not_convert(plan):
    """As test_kernel_scalars_that_do_not_convert, for every numeric
    constructor argument."""
    run_optimizer_example(plan, "optimizers, scalars that do not convert")
