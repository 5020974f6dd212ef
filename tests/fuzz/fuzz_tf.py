"""Fuzzing the TensorFlow ops called directly (`fusedopt.keras._op_library.load()`):
every fused update op (FusedoptAdam, ...; slots as separate handles or one
FusedoptVariableList), the regularizer ops and the dropout ops, eagerly and
inside tf.function. Run through tests/test_fuzz.py (each property in a child
process: the ops abort the process on some inputs).

Property: the op either leaves every variable equal to the float64 reference
(kernel_reference.py; dropout: TensorFlow's own stateless_dropout, bit for
bit, and the NumPy Philox masks of fuzz_regularizers_dropout.py) and every
input tensor unchanged, or it raises: tf.errors.InvalidArgumentError from the
kernel, TypeError/ValueError from the Python wrapper before the op; and every
variable and input is unchanged.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from hypothesis import given, note  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import fusedopt.ops as F  # noqa: E402
from fusedopt.keras import _op_library  # noqa: E402
from fuzz_numpy import (  # noqa: E402
    FLOAT_DTYPES,
    KERNEL_DEFAULTS,
    VALID_HYPER,
    VALID_HYPER_FOR,
    assert_call_matches,
    assert_matches,
    initial_states,
    kernel_hyper_range,
    nudged,
    spread_of,
)
from fuzz_regularizers_dropout import keep_mask  # noqa: E402
from fuzzlib import (  # noqa: E402
    FTRL_LEARNING_RATES,
    VALUE_KINDS,
    Fault,
    describe,
    failure,
    float_in,
    fuzz_settings,
    mostly,
    quiet,
    random_values,
    shapes,
    shown,
    trace,
)
from kernel_reference import KernelReference  # noqa: E402

LIB = _op_library.load()
RULES = sorted(r for r in F.RULES if r != "muon_momentum")  # Muon's momentum has no TF op
OP_ERRORS = (tf.errors.InvalidArgumentError,)
WRAPPER_ERRORS = (TypeError, ValueError)


def op_fault(kind: str, *names: str) -> Fault:
    """Refused by the kernel: InvalidArgumentError naming the input."""
    return Fault(kind, OP_ERRORS, names)


def shape_fault(kind: str, *names: str) -> Fault:
    """A wrong rank or length that the op's shape function sees: refused by
    the kernel when run eagerly, by the shape function while tracing a
    tf.function (ValueError, as TF's own ops); either names the input."""
    return Fault(kind, OP_ERRORS + (ValueError,), names)


def wrapper_fault(kind: str) -> Fault:
    """Refused by the generated Python wrapper or graph construction before
    the op runs (TypeError/ValueError), or by TF's eager executor when it
    matches the inputs to the op's signature (InvalidArgumentError). The
    messages are TensorFlow's."""
    return Fault(kind, OP_ERRORS + WRAPPER_ERRORS, ("",))


def any_fault(kind: str, *names: str) -> Fault:
    return Fault(kind, OP_ERRORS + WRAPPER_ERRORS, names or ("",))


# -- snapshots of variables and tensors ---------------------------------------------------

class TFMemory:
    """Every variable and input tensor of an example, as bytes."""

    def __init__(self) -> None:
        self.variables: list[tf.Variable] = []
        self.tensors: list[tf.Tensor] = []
        self.outputs: set[int] = set()  # ids of variables a valid call writes

    def variable(self, value: np.ndarray, written: bool = True) -> tf.Variable:
        v = tf.Variable(value)
        self.variables.append(v)
        if written:
            self.outputs.add(id(v))
        return v

    def tensor(self, t):
        if isinstance(t, tf.Tensor):
            self.tensors.append(t)
        return t

    def snapshot(self):
        return ([v.numpy().tobytes() for v in self.variables], [t.numpy().tobytes() for t in self.tensors])

    def assert_unchanged(self, before, exc=AssertionError):
        now = self.snapshot()
        for i, (a, b) in enumerate(zip(before[0], now[0])):
            if a != b:
                raise exc(f"variable #{i} changed")
        for i, (a, b) in enumerate(zip(before[1], now[1])):
            if a != b:
                raise exc(f"input tensor #{i} changed")

    def assert_only_outputs_changed(self, before, exc=AssertionError):
        now = self.snapshot()
        for i, (v, a, b) in enumerate(zip(self.variables, before[0], now[0])):
            if a != b and id(v) not in self.outputs:
                raise exc(f"variable #{i}, not an output, changed")
        for i, (a, b) in enumerate(zip(before[1], now[1])):
            if a != b:
                raise exc(f"input tensor #{i} changed (a write through a shared buffer)")


def expect_tf_outcome(call, faults, memory: TFMemory, check) -> str:
    """As fuzzlib.expect_outcome, for TF's exceptions."""
    before = memory.snapshot()
    try:
        try:
            result = call()
        except AssertionError as err:
            # TF's op_def_library, building a graph, asserts "Unreachable"
            # for an input of fixed dtype given a tensor of another dtype.
            if str(err) != "Unreachable":
                raise
            raise TypeError(f"TensorFlow's graph construction refused an input dtype ({err})") from err
    except OP_ERRORS + WRAPPER_ERRORS + (tf.errors.FailedPreconditionError, tf.errors.NotFoundError) as err:
        if not faults:
            raise failure("rejected valid", "op")(f"valid call raised {type(err).__name__}: {err}") from err
        memory.assert_unchanged(before, failure("changed by rejected", faults[0].kind))
        allowed = tuple({e for f in faults for e in f.exc})
        if not isinstance(err, allowed):
            raise failure("wrong exception", faults[0].kind)(
                f"{type(err).__name__} ({err}) for faults {shown(faults)}") from err
        if len(faults) == 1 and not any(n in str(err) for n in faults[0].names):
            raise failure("message lacks name", faults[0].kind)(f"{err} does not name {faults[0].names}") from err
        from hypothesis import event

        event(f"rejected: {'+'.join(sorted({f.kind for f in faults}))}")
        return "rejected"
    if faults:
        raise failure("accepted", faults[0].kind)(f"call with faults {shown(faults)} succeeded")
    memory.assert_only_outputs_changed(before, failure("wrote outside outputs", "op"))
    check(result)
    from hypothesis import event

    event("valid: compared with the reference")
    return "valid"


def run(fn, graph: bool):
    """fn() eagerly, or traced and run as a tf.function (an op without
    outputs returns None there)."""
    if not graph:
        return fn()

    def body():
        out = fn()
        return None if isinstance(out, tf.Operation) else out

    return tf.function(body, autograph=False)()


# -- the fused update ops -------------------------------------------------------------------

UPDATE_FAULTS = ["grad-shape", "grad-dtype", "grads-mixed", "grads-float16", "grads-count", "hyper-length",
                 "hyper-value", "hyper-rank", "lr", "step", "decay", "regularization", "reg-length",
                 "slot-count", "slot-twice", "param-as-slot", "param-twice", "slot-shape", "slot-dtype",
                 "list-count", "list-holds-param", "variable-as-list", "two-handles-as-list",
                 "param-not-resource", "uninitialized"]
VARIATIONS = ["grad-is-param-value", "grad-is-slot-value", "grad-reused"]


@st.composite
def update_call(draw, scalar_shapes: bool = False):
    rule = draw(st.sampled_from(RULES), label="rule")
    dtype = draw(st.sampled_from(FLOAT_DTYPES), label="dtype")
    n = draw(st.sampled_from([1, 2, 3, 1, 2, 0]), label="num_tensors")
    shape_list = [draw(shapes(max_rank=3), label=f"shape[{i}]") for i in range(n)]
    if rule == "adafactor":  # empty matrices: fuzz_numpy.test_adafactor_statistics_of_empty_matrices
        shape_list = [s[:-2] + tuple(max(d, 1) for d in s[-2:]) if len(s) >= 2 else s for s in shape_list]
    hyper = {}
    for name in F.RULES[rule]["hyper"]:
        valid = VALID_HYPER_FOR.get((rule, name), VALID_HYPER[name])
        if name == "epsilon_1":  # 1e-30 * (1 - beta_2_t) is subnormal in float32, and TF flushes it to 0
            valid = st.sampled_from([0.0, 1e-10, 1e-3])
        hyper[name] = float(draw(valid, label=name))
    lr = draw(FTRL_LEARNING_RATES if rule == "ftrl" else float_in(0.0, 1.0, [0.0, 0.01]), label="lr")
    reg = [draw(st.one_of(st.just(0.0), st.just(0.0), float_in(0.0, 0.05)), label=k) for k in ("l1", "l2", "prox")]
    plan = dict(rule=rule, dtype=dtype, shapes=shape_list, hyper=hyper, lr=lr,
                step=draw(st.one_of(st.integers(1, 20), st.just(2**40)), label="step"),
                decay=draw(st.one_of(st.just(0.0), float_in(0.0, 0.05)), label="decay"), reg=reg,
                values={i: draw(VALUE_KINDS) for i in range(n)}, warmup=draw(st.integers(0, 2)),
                state_list=draw(st.booleans(), label="state_list"), graph=draw(mostly(False, [True], 3), label="graph"),
                variation=draw(mostly(None, VARIATIONS, 8), label="variation"),
                seed=draw(st.integers(0, 2**32 - 1), label="seed"), fault=None, scalar_shapes=None)
    if scalar_shapes:
        plan["scalar_shapes"] = {k: draw(st.sampled_from([(), (), (1,), (0,), (2,), (1, 1)]), label=f"{k} shape")
                                 for k in ("learning_rate", "step", "decay")}
        return plan
    if draw(mostly(False, [True], 3), label="fault?"):
        kind = draw(st.sampled_from(UPDATE_FAULTS), label="fault")
        plan["fault"] = {"kind": kind, "i": draw(st.integers(0, max(0, n - 1))),
                         "value": draw(st.sampled_from([-0.5, np.nan, np.inf, -np.inf, 1.5, 1.0]))}
    return plan


def build_update(plan: dict, memory: TFMemory):
    rule, dtype, n = plan["rule"], plan["dtype"], len(plan["shapes"])
    names = F.RULES[rule]["states"]
    rng = np.random.default_rng(plan["seed"])
    p0 = [random_values(rng, s, plan["values"][i]) for i, s in enumerate(plan["shapes"])]
    warm = KernelReference(rule, {**KERNEL_DEFAULTS[rule], "u_product": 0.5, **plan["hyper"]}, p0,
                           initial_states(rule, p0, rng))
    for t in range(1, plan["warmup"] + 1):
        warm.call([rng.standard_normal(s) for s in plan["shapes"]], 0.05, t, 0.0)
    params = [memory.variable(warm.params[i].astype(dtype)) for i in range(n)]
    slots = [[memory.variable(warm.slots[name][i].astype(dtype)) for i in range(n)] for name in names]
    grads = [memory.tensor(tf.constant(random_values(rng, s, "normal").astype(dtype))) for s in plan["shapes"]]
    variation = plan["variation"]
    if variation == "grad-is-param-value" and n:
        grads[0] = memory.tensor(params[0].read_value())
    elif variation == "grad-is-slot-value" and n and names and slots[-1][0].shape == params[0].shape:
        grads[0] = memory.tensor(slots[-1][0].read_value())
    elif variation == "grad-reused" and n >= 2 and plan["shapes"][1] == plan["shapes"][0]:
        grads[1] = grads[0]
    return params, slots, grads


def update_arguments(plan: dict, memory: TFMemory, params, slots, grads):
    """The op's keyword arguments (the plan's fault applied) and the faults."""
    rule, dtype, n = plan["rule"], plan["dtype"], len(params)
    names = F.RULES[rule]["states"]
    hyper_used = dict(plan["hyper"])  # as the op gets it (a "fault" may be a valid value)
    hyper = [hyper_used[k] for k in F.RULES[rule]["hyper"]]
    f = plan["fault"] or {}
    kind, i, value = f.get("kind"), f.get("i", 0), f.get("value")
    # No tensors: the op's T cannot be inferred from an empty grads list.
    faults = [] if n else [wrapper_fault("no-tensors")]
    state_vars = [slots[k][j] for k in range(len(names)) for j in range(n)]  # slot-major
    param_vars = list(params)
    grads = list(grads)
    hyper_t = tf.constant(hyper, tf.float64)
    reg = list(plan["reg"])
    scalars = {"learning_rate": plan["lr"], "step": plan["step"], "decay": plan["decay"]}
    if kind == "grad-shape" and n:
        grads[i] = memory.tensor(tf.zeros(tuple(params[i].shape) + (2,), dtype))
        faults.append(op_fault(kind, f"grads[{i}]"))
    elif kind == "grad-dtype" and n:
        other = np.float64 if dtype == np.float32 else np.float32
        grads = [memory.tensor(tf.cast(g, other)) for g in grads]
        faults.append(op_fault(kind, "dtype"))
    elif kind == "grads-mixed" and n >= 2:
        grads[1] = memory.tensor(tf.cast(grads[1], np.float64 if dtype == np.float32 else np.float32))
        faults.append(wrapper_fault(kind))
    elif kind == "grads-float16" and n:
        grads = [memory.tensor(tf.cast(g, tf.float16)) for g in grads]
        faults.append(wrapper_fault(kind))
    elif kind == "grads-count":
        grads = grads + [memory.tensor(tf.zeros([1], dtype))]
        faults.append(wrapper_fault(kind))
    elif kind == "hyper-length":
        hyper_t = tf.constant(hyper + [0.5], tf.float64)
        faults.append(op_fault(kind, "hyper"))
    elif kind == "hyper-value" and hyper:
        bad = list(hyper)
        bad[i % len(hyper)] = value
        hyper_t = tf.constant(bad, tf.float64)
        name = F.RULES[rule]["hyper"][i % len(hyper)]
        hyper_used[name] = value
        x = float(value)
        if not np.isfinite(x) or not kernel_hyper_range(rule, name)(x):
            faults.append(op_fault(kind, "hyper", name))
    elif kind == "hyper-rank":
        hyper_t = tf.reshape(hyper_t, (1, len(hyper)))
        faults.append(shape_fault(kind, "hyper"))
    elif kind in ("lr", "decay"):
        scalars["learning_rate" if kind == "lr" else "decay"] = value
        if not (np.isfinite(value) and value >= 0):
            faults.append(op_fault(kind, "learning_rate" if kind == "lr" else "decay"))
        elif kind == "lr" and rule == "ftrl" and value == 0:
            faults.append(op_fault(kind, "learning_rate"))
    elif kind == "step":
        scalars["step"] = int(value) if np.isfinite(value) else 0
        if scalars["step"] < 1:
            faults.append(op_fault(kind, "step"))
    elif kind == "regularization":
        reg[i % 3] = value
        if not (np.isfinite(value) and value >= 0):
            faults.append(op_fault(kind, ("l1", "l2", "proximal_l1")[i % 3]))
    elif kind == "reg-length":
        reg = reg[:2]
        faults.append(shape_fault(kind, "regularization"))
    elif kind == "slot-count" and state_vars:
        state_vars = state_vars[:-1]
        faults.append(op_fault(kind, "num_states"))
    elif kind == "slot-twice" and len(state_vars) >= 2:
        state_vars[1] = state_vars[0]
        faults.append(op_fault(kind, "same variable"))
    elif kind == "param-as-slot" and state_vars and n:
        state_vars[0] = params[0]
        faults.append(op_fault(kind, "same variable"))
    elif kind == "param-twice" and n >= 2 and plan["shapes"][0] == plan["shapes"][1]:
        param_vars[1] = param_vars[0]
        faults.append(op_fault(kind, "same variable"))
    elif kind == "slot-shape" and state_vars:
        k = i % len(state_vars)
        shape = tuple(state_vars[k].shape)
        state_vars[k] = memory.variable(np.zeros(shape + (1,), dtype), written=False)
        faults.append(op_fault(kind, "slot"))
    elif kind == "slot-dtype" and state_vars:
        k = i % len(state_vars)
        other = np.float64 if dtype == np.float32 else np.float32
        state_vars[k] = memory.variable(np.zeros(tuple(state_vars[k].shape), other), written=False)
        faults.append(op_fault(kind, "dtype"))
    elif kind == "param-not-resource" and n:
        param_vars[0] = grads[0]
        faults.append(wrapper_fault(kind))
    elif kind == "uninitialized" and n:
        handle = tf.raw_ops.VarHandleOp(dtype=dtype, shape=list(plan["shapes"][0]), shared_name=f"fuzz{id(plan)}")
        param_vars[0] = handle
        faults.append(Fault(kind, (tf.errors.FailedPreconditionError, tf.errors.NotFoundError), ("",)))
    handles = [v if isinstance(v, tf.Tensor) and v.dtype == tf.resource else v.handle if hasattr(v, "handle") else v
               for v in param_vars]
    state_handles = [v.handle for v in state_vars]
    state_list = plan["state_list"]
    if kind == "list-count" and state_vars:
        state_list, state_handles = True, [LIB.fusedopt_variable_list(variables=state_handles[:-1])]
        faults.append(op_fault(kind, "state list"))
    elif kind == "slot-count" and state_list and any(f.kind == kind for f in faults):
        state_handles = [LIB.fusedopt_variable_list(variables=state_handles)]
        faults = [op_fault(kind, "state list") if f.kind == kind else f for f in faults]
    elif kind == "list-holds-param" and state_vars and n:
        state_list, state_handles = True, [LIB.fusedopt_variable_list(variables=[params[0].handle] + state_handles[1:])]
        faults.append(op_fault(kind, "same variable"))
    elif kind == "variable-as-list" and n:
        state_list, state_handles = True, [params[0].handle] if not state_vars else [state_handles[0]]
        faults.append(op_fault(kind, ""))
    elif kind == "two-handles-as-list" and len(state_handles) >= 2:
        state_list = True
        faults.append(op_fault(kind, "state_list"))
    elif state_list:
        state_handles = [LIB.fusedopt_variable_list(variables=state_handles)]
    args = dict(params=handles, states=state_handles, grads=grads, hyper=hyper_t,
                learning_rate=tf.constant(scalars["learning_rate"], tf.float64),
                step=tf.constant(scalars["step"], tf.int64), decay=tf.constant(scalars["decay"], tf.float64),
                regularization=tf.constant(reg, tf.float64), state_list=state_list,
                hyper_names=list(F.RULES[plan["rule"]]["hyper"]))
    return args, faults, scalars, reg, hyper_used


def run_update_example(plan: dict, test: str) -> None:
    rule, dtype = plan["rule"], plan["dtype"]
    names = F.RULES[rule]["states"]
    memory = TFMemory()
    params, slots, grads = build_update(plan, memory)
    args, faults, scalars, reg, hyper_used = update_arguments(plan, memory, params, slots, grads)
    if plan["scalar_shapes"]:
        for k, shape in plan["scalar_shapes"].items():
            tf_dtype = tf.int64 if k == "step" else tf.float64
            args[k] = tf.fill(shape, tf.constant(scalars[k], tf_dtype))
            if shape != ():
                faults.append(shape_fault("non-scalar", k))
    note(f"faults: {shown(faults)}")
    trace(describe(test=test, plan=plan, faults=faults))
    inputs = ([p.numpy().astype(np.float64) for p in params], [g.numpy().astype(np.float64) for g in grads],
              {name: [s.numpy().astype(np.float64) for s in group] for name, group in zip(names, slots)})
    op = getattr(LIB, f"fusedopt_{rule}")

    def reference(in_dtype, nudge=None):
        p0, g0, s0 = inputs
        if nudge is not None:
            p0, g0 = [nudged(p, nudge) for p in p0], [nudged(g, nudge) for g in g0]
            s0 = {k: [nudged(x, nudge) for x in v] for k, v in s0.items()}
        ref = KernelReference(rule, hyper_used, p0, s0, dtype=in_dtype)
        with quiet():
            ref.call(g0, scalars["learning_rate"], scalars["step"], scalars["decay"], *reg)
        return [ref.params] + [ref.slots[name] for name in names]

    def check(_):
        if not params:
            return
        actual = [[p.numpy() for p in params]] + [[s.numpy() for s in group] for group in slots]
        assert_call_matches(actual, ["params"] + list(names), reference, dtype, plan["seed"], f"tf {rule}")

    expect_tf_outcome(lambda: run(lambda: op(**args), plan["graph"]), faults, memory, check)


@fuzz_settings(500)
@given(update_call())
def test_fused_update_ops_match_reference_or_reject(plan):
    run_update_example(plan, "tf update ops")


@fuzz_settings(60)
@given(update_call(scalar_shapes=True))
def test_update_op_scalar_inputs_of_every_shape(plan):
    """learning_rate, step and decay must be scalars: any other shape is an
    InvalidArgumentError (TF's .scalar<T>() aborts the process on it)."""
    run_update_example(plan, "tf update ops, scalar inputs of every shape")


# -- the regularizer and dropout ops ----------------------------------------------------------

OTHER_OPS = ["elastic_penalty", "elastic_gradient", "sp_penalty", "sp_gradient", "dropout", "dropout_grad"]
OTHER_FAULTS = ["x-dtype", "scalar-value", "scalar-shape", "scalar-dtype", "reference-shape",
                "reference-dtype", "seed-shape", "noise-length", "noise-entry", "mask-size", "mask-dtype"]


@st.composite
def other_call(draw):
    op = draw(st.sampled_from(OTHER_OPS), label="op")
    shape = draw(shapes(), label="shape")
    noise = tuple(draw(st.sampled_from([1, d])) for d in shape)
    plan = dict(op=op, dtype=draw(st.sampled_from(FLOAT_DTYPES), label="dtype"), shape=shape, noise=noise,
                a=draw(st.one_of(st.just(0.0), float_in(0.0, 1.0)), label="l1/alpha"),
                b=draw(st.one_of(st.just(0.0), float_in(0.0, 1.0)), label="l2"),
                rate=draw(st.one_of(st.just(0.0), float_in(0.0, 0.95)), label="rate"),
                seed=draw(st.tuples(st.integers(-(2**63), 2**63 - 1), st.integers(-(2**63), 2**63 - 1)), label="seed"),
                values=draw(st.one_of(VALUE_KINDS, st.just("special"))), graph=draw(mostly(False, [True], 3)),
                buffer_seed=draw(st.integers(0, 2**32 - 1)), fault=None)
    if draw(mostly(False, [True], 3), label="fault?"):
        plan["fault"] = {"kind": draw(st.sampled_from(OTHER_FAULTS)),
                         "value": draw(st.sampled_from([-0.5, np.nan, np.inf, 1.0, 1.5]))}
    return plan


def run_other_example(plan: dict, test: str) -> None:
    op, dtype, shape = plan["op"], plan["dtype"], plan["shape"]
    memory = TFMemory()
    rng = np.random.default_rng(plan["buffer_seed"])
    from fuzzlib import specials, sprinkle

    xv = random_values(rng, shape, "normal" if plan["values"] == "special" else plan["values"])
    # Non-finite values for the dropout ops only: the regularizer ops share the
    # engine code that fuzz_regularizers_dropout's non-finite property covers.
    if plan["values"] == "special" and op.startswith("dropout"):
        xv = sprinkle(rng, xv, specials())
    x = memory.tensor(tf.constant(xv.astype(dtype)))
    ref_t = memory.tensor(tf.constant(random_values(rng, shape, "normal").astype(dtype)))
    noise = list(plan["noise"])
    count = int(np.prod(noise, dtype=np.int64))
    mask_np = rng.integers(0, 256, (count + 7) // 8).astype(np.uint8)
    mask = memory.tensor(tf.constant(mask_np))
    a, b, rate, seed = plan["a"], plan["b"], plan["rate"], list(plan["seed"])
    f = plan["fault"] or {}
    kind, value = f.get("kind"), f.get("value")
    faults = []
    scalar_dtype, scalar_shape, seed_shape = tf.float64, (), (2,)
    scalar_name = {"elastic_penalty": "l1", "elastic_gradient": "l1", "sp_penalty": "alpha",
                   "sp_gradient": "alpha", "dropout": "rate", "dropout_grad": "rate"}[op]
    if kind == "x-dtype":
        x = memory.tensor(tf.cast(x, tf.float16))
        faults.append(wrapper_fault(kind))
    elif kind == "scalar-value":
        if scalar_name == "rate":
            rate = value
            bad = not (np.isfinite(value) and 0 <= value < 1)
        else:
            a = value
            bad = not (np.isfinite(value) and value >= 0)
        if bad:
            faults.append(op_fault(kind, scalar_name))
    elif kind == "scalar-shape":
        scalar_shape = (1,)
        faults.append(shape_fault(kind, scalar_name))
    elif kind == "scalar-dtype":
        scalar_dtype = tf.float32
        faults.append(wrapper_fault(kind))
    elif kind == "reference-shape" and op.startswith("sp"):
        ref_t = memory.tensor(tf.zeros(tuple(shape) + (1,), dtype))
        faults.append(shape_fault(kind, "reference"))
    elif kind == "reference-dtype" and op.startswith("sp"):
        ref_t = memory.tensor(tf.cast(ref_t, tf.float64 if dtype == np.float32 else tf.float32))
        faults.append(wrapper_fault(kind))
    elif kind == "seed-shape" and op == "dropout":
        seed, seed_shape = seed + [1], (3,)
        faults.append(shape_fault(kind, "seed"))
    elif kind == "noise-length" and op.startswith("dropout"):
        noise = noise + [1]
        faults.append(shape_fault(kind, "noise_shape"))
    elif kind == "noise-entry" and op.startswith("dropout") and shape:
        noise[-1] = shape[-1] + 2
        faults.append(op_fault(kind, "noise_shape"))
    elif kind == "mask-size" and op == "dropout_grad":
        mask = memory.tensor(tf.constant(np.append(mask_np, np.uint8(1))))
        faults.append(op_fault(kind, "mask"))
    elif kind == "mask-dtype" and op == "dropout_grad":
        mask = memory.tensor(tf.cast(mask, tf.int32))
        faults.append(wrapper_fault(kind))
    scalar = lambda v: tf.fill(scalar_shape, tf.constant(v, scalar_dtype))  # noqa: E731
    noise_t = tf.constant(noise, tf.int64, shape=(len(noise),))
    calls = {
        "elastic_penalty": lambda: LIB.fusedopt_elastic_penalty(x=x, l1=scalar(a), l2=tf.constant(b, tf.float64)),
        "elastic_gradient": lambda: LIB.fusedopt_elastic_gradient(x=x, l1=scalar(a), l2=tf.constant(b, tf.float64)),
        "sp_penalty": lambda: LIB.fusedopt_sp_penalty(x=x, reference=ref_t, alpha=scalar(a)),
        "sp_gradient": lambda: LIB.fusedopt_sp_gradient(x=x, reference=ref_t, alpha=scalar(a)),
        "dropout": lambda: LIB.fusedopt_dropout(x=x, rate=scalar(rate),
                                                seed=tf.constant(seed, tf.int64, shape=seed_shape),
                                                noise_shape=noise_t),
        "dropout_grad": lambda: LIB.fusedopt_dropout_grad(dy=x, mask=mask, rate=scalar(rate), noise_shape=noise_t),
    }
    note(f"faults: {shown(faults)}")
    trace(describe(test=test, plan=plan, faults=faults))
    x64 = xv.astype(dtype).astype(np.float64)
    r64 = ref_t.numpy().astype(np.float64) if not faults else None

    def check(result):
        dt = np.dtype(dtype)
        if op.endswith("penalty"):
            with quiet():
                exact = (a * np.sum(np.abs(x64)) + (b * np.sum(x64 * x64) if b else 0.0)) if op == "elastic_penalty" \
                    else a / 2 * np.sum((x64 - r64) ** 2)
            got = float(result.numpy())
            expected = float(np.asarray(exact).astype(dt))
            tol = (1e-6 if dt == np.float32 else 1e-12) * abs(expected)
            if not (got == expected or abs(got - expected) <= tol or (np.isnan(got) and np.isnan(expected))):
                raise failure("wrong result", f"tf {op}")(f"{op}: {got!r} vs {expected!r}")
            return
        if op.endswith("gradient"):
            with quiet():
                exact = a * np.sign(x64) + 2 * b * x64 if op == "elastic_gradient" else a * (x64 - r64)
            with quiet():
                x32 = x64.astype(np.float32)
                low = (np.float32(a) * np.sign(x32) + np.float32(2 * b) * x32 if op == "elastic_gradient"
                       else np.float32(a) * (x32 - r64.astype(np.float32)))
            assert_matches([result.numpy()], [exact], dt, op, spread_of([exact], [low], dt), where=f"tf {op}")
            return
        scale = dt.type(1.0 / (1.0 - rate))
        if op == "dropout":
            y, packed = result
            keep, noise_keep = keep_mask(shape, tuple(noise), dt, rate, tuple(int(s) & (2**64 - 1) for s in seed))
            bits = np.packbits(noise_keep.reshape(-1).astype(np.uint8), bitorder="little")
            if packed.numpy().tobytes() != bits.tobytes():
                raise failure("wrong mask", "tf dropout")(f"{packed.numpy()!r} vs {bits!r}")
            expected = tf.nn.experimental.stateless_dropout(
                tf.constant(x64.astype(dt)), rate, seed=tf.constant(seed, tf.int64), noise_shape=noise).numpy()
            if y.numpy().tobytes() != expected.tobytes():
                raise failure("wrong result", "tf dropout")("y differs from tf.nn.experimental.stateless_dropout")
            return
        bits = np.unpackbits(mask.numpy(), bitorder="little")[:count].astype(bool).reshape(noise)
        with quiet():
            expected = np.where(np.broadcast_to(bits, shape), x64.astype(dt) * scale, 0.0)
        assert_matches([result.numpy()], [expected], dt, op, where=f"tf {op}")

    expect_tf_outcome(lambda: run(calls[op], plan["graph"]), faults, memory, check)


@fuzz_settings(400)
@given(other_call())
def test_regularizer_and_dropout_ops_match_reference_or_reject(plan):
    run_other_example(plan, "tf regularizer and dropout ops")
