"""What the fuzz modules share: settings, the example trace, arrays in guarded
buffers, snapshots, the expected-outcome check and value strategies.

The property every fuzz test checks: a call either succeeds and its results
equal an independent float64 reference, or it raises TypeError/ValueError
(the kind the spec names for the fault) and every input is unchanged. Which
outcome is due is decided from the inputs alone (`Fault`s found by
inspecting them), never from what the call did.
"""

from __future__ import annotations

import contextlib
import math
import os
import warnings
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Callable, Iterable, Sequence

import numpy as np
from hypothesis import HealthCheck, Phase, event, settings
from hypothesis import strategies as st

EXAMPLES_ENV = "FUSEDOPT_FUZZ_EXAMPLES"  # examples per property (overrides each default)
TRACE_ENV = "FUSEDOPT_FUZZ_TRACE"  # file that holds the example being run (for crashes)


def fuzz_settings(examples: int) -> settings:
    """`examples` per property unless FUSEDOPT_FUZZ_EXAMPLES says otherwise;
    no example database (a fixed --hypothesis-seed gives the same run)."""
    return settings(
        max_examples=int(os.environ.get(EXAMPLES_ENV, examples)),
        deadline=None,
        database=None,
        # No explain phase: it traces coverage, minutes per failing property.
        phases=[Phase.explicit, Phase.generate, Phase.target, Phase.shrink],
        print_blob=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                               HealthCheck.filter_too_much, HealthCheck.function_scoped_fixture,
                               HealthCheck.large_base_example],
    )


def trace(description: str) -> None:
    """Write the example about to run where the parent test can read it if
    this process dies in native code."""
    path = os.environ.get(TRACE_ENV)
    if path:
        with open(path, "w") as f:
            f.write(description)


@contextlib.contextmanager
def quiet():
    """NumPy's floating-point warnings off (the references meet NaN, Inf and
    means of empty slices on purpose)."""
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


# -- faults and the outcome check ---------------------------------------------

@dataclass(frozen=True)
class Fault:
    """One thing wrong with a call's inputs: the exception(s) the spec asks
    for, and the names one of which the message must contain."""
    kind: str
    exc: tuple
    names: tuple

    def __repr__(self) -> str:
        return f"{self.kind}({'/'.join(self.names)})"


def type_fault(kind: str, *names: str) -> Fault:
    return Fault(kind, (TypeError,), names)


def value_fault(kind: str, *names: str) -> Fault:
    return Fault(kind, (ValueError,), names)


def either_fault(kind: str, *names: str) -> Fault:
    return Fault(kind, (TypeError, ValueError), names)


_FAILURE_CLASSES: dict = {}


def failure(what: str, kind: str) -> type:
    """An AssertionError subclass per (what failed, fault kind), so that
    Hypothesis reports each distinct failure on its own."""
    key = (what, kind)
    if key not in _FAILURE_CLASSES:
        name = "".join(w.capitalize() for w in f"{what} {kind}".replace("-", " ").split())
        _FAILURE_CLASSES[key] = type(name, (AssertionError,), {})
    return _FAILURE_CLASSES[key]


def shown(faults: Sequence[Fault]) -> str:
    return repr(list(faults[:6])) + (f" and {len(faults) - 6} more" if len(faults) > 6 else "")


def expect_outcome(call: Callable[[], Any], faults: Sequence[Fault], memory: "Memory",
                   check_result: Callable[[Any], None],
                   rejected: tuple = (TypeError, ValueError)) -> str:
    """Run `call`. With faults it must raise one of the faults' exceptions
    (with a single fault, naming it) and leave `memory` as it was; without,
    it must succeed, write nothing outside its outputs, and pass `check_result`.
    Any other exception propagates (a failure of its own)."""
    before = memory.snapshot()
    try:
        result = call()
    except rejected as err:
        if not faults:
            raise failure("rejected valid", "call")(f"valid call raised {type(err).__name__}: {err}") from err
        memory.assert_unchanged(before, failure("changed by rejected", faults[0].kind))
        allowed = tuple({e for f in faults for e in f.exc})
        if not isinstance(err, allowed):
            raise failure("wrong exception", faults[0].kind)(
                f"{type(err).__name__} ({err}) for faults {shown(faults)}; expected one of "
                f"{[e.__name__ for e in allowed]}") from err
        if len(faults) == 1 and not any(n in str(err) for n in faults[0].names):
            raise failure("message lacks name", faults[0].kind)(
                f"{type(err).__name__}: {err!s} does not name any of {faults[0].names}") from err
        event(f"rejected: {'+'.join(sorted({f.kind for f in faults}))}")
        return "rejected"
    if faults:
        raise failure("accepted", faults[0].kind)(f"call with faults {shown(faults)} succeeded")
    memory.assert_only_outputs_changed(before, failure("wrote outside outputs", "call"))
    check_result(result)
    event("valid: compared with the reference")
    return "valid"


# -- arrays in guarded buffers ---------------------------------------------------

ALIGN = 64
GUARD = 64


def address(a: np.ndarray) -> int:
    return a.__array_interface__["data"][0]


class Memory:
    """Every buffer an example's arrays live in. Arrays are placed between
    random guard bytes, so a snapshot of the buffers shows any write, in or
    out of bounds."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.buffers: list[np.ndarray] = []
        self.outputs: list[np.ndarray] = []  # arrays a valid call may write
        self.others: list[Any] = []  # arrays we did not place (object dtype, made by the code under test)

    # placement ------------------------------------------------------------------
    def buffer(self, nbytes: int) -> np.ndarray:
        buf = self.rng.integers(0, 256, nbytes + 2 * GUARD + ALIGN, dtype=np.uint8)
        self.buffers.append(buf)
        return buf

    def aligned_start(self, buf: np.ndarray, extra: int = 0) -> int:
        return GUARD + (-(address(buf) + GUARD) % ALIGN) + extra

    def place(self, values: np.ndarray, dtype: Any, layout: str = "c") -> np.ndarray:
        """`values` (float64) as an array of `dtype` with `layout`: c, offset,
        fortran, strided, reversed, transposed, broadcast, read-only, misaligned."""
        dtype = np.dtype(dtype)
        shape = values.shape
        if dtype == object:
            a = np.empty(shape, dtype=object)
            a[...] = values
            self.others.append(a)
            return a
        if layout in ("strided", "reversed", "transposed") and len(shape) == 0:
            layout = "c"
        if layout == "strided":
            axis = int(self.rng.integers(len(shape)))
            step = int(self.rng.integers(2, 4))
            big = list(shape)
            big[axis] = max(1, shape[axis] * step)
            base = self.place(np.zeros(big), dtype, "c")
            index = [slice(None)] * len(shape)
            index[axis] = slice(0, shape[axis] * step, step)
            a = base[tuple(index)]
        elif layout == "reversed":
            a = self.place(values[::-1], dtype, "c")[::-1]
        elif layout == "transposed":
            a = self.place(np.ascontiguousarray(values.T), dtype, "c").T
        elif layout == "broadcast":
            base = self.place(values.reshape(-1)[:1].reshape((1,) * len(shape)) if values.size
                              else np.zeros((1,) * len(shape)), dtype, "c")
            a = np.broadcast_to(base, shape)
            return a
        else:
            nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            buf = self.buffer(nbytes + 8 * dtype.itemsize)
            extra = 0
            if layout == "offset":
                extra = dtype.itemsize * int(self.rng.integers(1, 8))
            elif layout == "misaligned":
                extra = int(self.rng.integers(1, dtype.itemsize)) if dtype.itemsize > 1 else 0
            start = self.aligned_start(buf, extra)
            a = np.ndarray(shape, dtype, buffer=buf, offset=start,
                           order="F" if layout == "fortran" else "C")
        with np.errstate(all="ignore"):
            a[...] = values.astype(dtype) if dtype.kind != "b" else values != 0
        if layout == "read-only":
            a.flags.writeable = False
        return a

    def adopt(self, a: Any) -> Any:
        """Track an array made elsewhere (its bytes are snapshot as they are)."""
        self.others.append(a)
        return a

    # snapshots ------------------------------------------------------------------
    @staticmethod
    def _bytes_of(x: Any) -> Any:
        if isinstance(x, np.ndarray):
            if x.dtype == object:
                return [repr(v) for v in x.flat]
            return (x.shape, x.dtype.str, np.ascontiguousarray(x).tobytes())
        return repr(x)

    def snapshot(self) -> tuple:
        return ([b.tobytes() for b in self.buffers], [self._bytes_of(x) for x in self.others])

    def assert_unchanged(self, before: tuple, exc: type = AssertionError) -> None:
        bufs, others = self.snapshot()
        for i, (a, b) in enumerate(zip(before[0], bufs)):
            if a != b:
                diff = np.flatnonzero(np.frombuffer(a, np.uint8) != np.frombuffer(b, np.uint8))
                raise exc(f"buffer {i} changed at bytes {diff[:8].tolist()} (of {len(diff)})")
        for i, (a, b) in enumerate(zip(before[1], others)):
            if a != b:
                raise exc(f"array #{i} (not in a guarded buffer) changed")

    def assert_only_outputs_changed(self, before: tuple, exc: type = AssertionError) -> None:
        bufs, others = self.snapshot()
        for i, (buf, old, new) in enumerate(zip(self.buffers, before[0], bufs)):
            if old == new:
                continue
            may_change = np.zeros(buf.size, bool)
            lo, hi = address(buf), address(buf) + buf.size
            for out in self.outputs:
                a = address(out)
                if lo <= a < hi and out.nbytes:
                    may_change[a - lo:a - lo + out.nbytes] = True
            changed = np.frombuffer(old, np.uint8) != np.frombuffer(new, np.uint8)
            bad = np.flatnonzero(changed & ~may_change)
            if bad.size:
                raise exc(f"buffer {i} changed outside every output at bytes {bad[:8].tolist()}")
        outputs = {id(o) for o in self.outputs}
        for i, (x, a, b) in enumerate(zip(self.others, before[1], others)):
            if a != b and id(x) not in outputs:
                raise exc(f"input array #{i} (not in a guarded buffer) changed")


# -- values -------------------------------------------------------------------

def specials(nonnegative: bool = False) -> np.ndarray:
    """NaN, infinities and signed zeros. (No huge finite values: the rules'
    Keras forms, such as m + (g - m)(1 - beta), cancel them away in float32,
    which the float64 reference does not; no subnormals: float32 rounds
    products of them to a few bits, so ratios of them are far off in
    float32, and the reference does not model float32 rounding.)"""
    if nonnegative:
        return np.array([np.nan, np.inf, 0.0])
    return np.array([np.nan, np.inf, -np.inf, 0.0, -0.0])


def sprinkle(rng: np.random.Generator, x: np.ndarray, values: np.ndarray) -> np.ndarray:
    """x with 1-4 of its elements replaced by `values` (specials)."""
    x = np.array(x, np.float64)
    flat = x.reshape(-1)
    if flat.size:
        k = int(rng.integers(1, min(flat.size, 4) + 1))
        flat[rng.choice(flat.size, k, replace=False)] = rng.choice(values, k)
    return x


def random_values(rng: np.random.Generator, shape: tuple, kind: str) -> np.ndarray:
    """float64 values: normal (scaled), zeros, positive, or normal with a few
    specials (see `specials`)."""
    n = int(np.prod(shape, dtype=np.int64))
    if kind == "zeros":
        return np.zeros(shape)
    x = rng.standard_normal(n)
    if kind == "positive":
        x = np.abs(x) + 0.05
    elif kind == "small":
        x = x * 1e-3
    elif kind == "large":
        x = x * 1e3
    elif kind == "special":
        x = sprinkle(rng, x, specials())
    return x.reshape(shape)


VALUE_KINDS = st.sampled_from(["normal"] * 6 + ["small", "large", "zeros"] + ["normal"] * 6)  # finite


def shapes(max_rank: int = 3, min_rank: int = 0) -> st.SearchStrategy:
    """Small shapes, zero sizes and 0-d included; now and then one long
    enough for several vector widths and tails, or for several chunks."""
    dim = st.one_of(st.integers(1, 6), st.integers(1, 6), st.integers(0, 2), st.integers(7, 40))
    small = st.lists(dim, min_size=min_rank, max_size=max_rank).map(tuple)
    long = st.sampled_from([(1023,), (4097,), (70_001,), (257, 263)][: 4 if max_rank >= 2 else 3])
    if min_rank > 1:
        long = st.sampled_from([(33, 129), (257, 263), (3, 5, 277)][: 2 if max_rank < 3 else 3])
    return st.one_of(small, small, small, small, small, small, small, small, small, long)


# -- scalars ------------------------------------------------------------------

@dataclass(frozen=True)
class Scalar:
    """A drawn argument value and what the spec says of it: `kind` is
    "ok", "type" (not a number: TypeError), "value" (out of range:
    ValueError) or "either"."""
    value: Any
    kind: str = "ok"
    label: str = ""

    def __repr__(self) -> str:
        return f"{self.value!r}" + (f"<{self.kind}:{self.label}>" if self.kind != "ok" else "")


NOT_NUMBERS = [("string", "0.1"), ("none", None), ("list", [0.1]), ("complex", 1j),
               ("dict", {"x": 1}), ("object", object())]
# Values whose conversion to a double fails in Python itself (not numbers to
# the spec: TypeError/ValueError naming the argument, not OverflowError or an
# unnamed NumPy error). Fuzzed on their own: test_scalar_conversion_failures.
HARD_SCALARS = [("huge-int", 10**400, "value"), ("-huge-int", -(10**400), "value"),
                ("array-1", np.array([0.1]), "type"), ("array-2", np.array([0.1, 0.2]), "type")]


def bad_types(allow_none: bool = False) -> st.SearchStrategy:
    items = [(n, v) for n, v in NOT_NUMBERS if not (allow_none and v is None)]
    return st.sampled_from(items).map(lambda nv: Scalar(nv[1], "type", nv[0]))


def number_types(x: float) -> st.SearchStrategy:
    """x as float, numpy float64/float32, Fraction (all numbers)."""
    options = [st.just(x), st.just(x), st.just(np.float64(x))]
    if np.isfinite(np.float32(x)) and float(np.float32(x)) == x:
        options.append(st.just(np.float32(x)))
    if math.isfinite(x):
        options.append(st.just(Fraction(x)))
        if float(x).is_integer() and abs(x) < 2**62:
            options.append(st.just(int(x)))
    return st.one_of(*options)


def non_finite() -> st.SearchStrategy:
    return st.sampled_from([("nan", math.nan), ("inf", math.inf), ("-inf", -math.inf)]).map(
        lambda nv: Scalar(nv[1], "value", nv[0]))



def float_in(low: float, high: float, specials: Iterable[float] = ()) -> st.SearchStrategy:
    """Floats in [low, high] and `specials`; none in (0, 1e-30): TensorFlow
    runs its kernels with denormals flushed to zero, so a product of such a
    scalar (an L2-SP alpha / 2) flushes to 0 there but not in the reference."""
    values = st.floats(low, high, allow_nan=False, allow_infinity=False, allow_subnormal=False).filter(
        lambda x: x == 0 or abs(x) >= 1e-30)
    sp = list(specials)
    return st.one_of(values, st.sampled_from(sp)) if sp else values


# Ftrl's learning rates for the comparisons: Ftrl divides a difference of
# nearly equal powers acc**-learning_rate_power by the rate, so below 1e-2 the
# float32 rounding of those powers (spacing 6e-8 near 1) grows 1/lr-fold,
# past what a float32 rerun of the reference shows.
FTRL_LEARNING_RATES = st.floats(1e-2, 1.0, allow_nan=False, allow_subnormal=False)


def mostly(default, options: Sequence, weight: int) -> st.SearchStrategy:
    """`default` about `weight` times in `weight + len(options)` (on both ends
    of the list: Hypothesis favours the first and the last entry)."""
    half = max(1, weight // 2)
    return st.sampled_from([default] * half + list(options) + [default] * (weight - half))


def describe(**parts: Any) -> str:
    return "\n".join(f"{k} = {v!r}" for k, v in parts.items())


def overlaps(a: Any, b: Any) -> bool:
    return (isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.size > 0 and b.size > 0
            and a.dtype != object and b.dtype != object and np.shares_memory(a, b))
