"""The implementations `fusedopt bench` puts side by side.

`make_step(impl, rule, params, grads, dtype, seed)` builds fresh state for one
case and returns a no-argument callable that runs one step. It raises
`Unavailable` (with the reason) when the implementation lacks the rule or its
library is missing. TensorFlow, Keras and PyTorch are imported only when an
implementation needs them.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import os
import sys
from typing import Any, Callable

import numpy as np

import fusedopt
from fusedopt import _core
from fusedopt.bench import fused_op, reference
from fusedopt.bench.rules import DROPOUT_RATE, THREAD_AWARE, Rule

Step = Callable[[], Any]


class Unavailable(Exception):
    """An implementation cannot run a case; the message says why."""


def _quiet_tensorflow() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")


@functools.lru_cache(maxsize=None)
def library_problem(impl: str) -> str | None:
    """Why `impl` cannot run on this machine at all (None when it can)."""
    try:
        if impl.startswith(("keras", "fusedopt-keras")) or impl == "tf-raw":
            _quiet_tensorflow()
            import keras
            import tensorflow  # noqa: F401

            if keras.backend.backend() != "tensorflow":
                return f"Keras backend is {keras.backend.backend()!r}, the benchmark needs 'tensorflow'"
        if impl.startswith("fusedopt-keras"):
            importlib.import_module("fusedopt.keras")
        if impl.startswith("torch"):
            import torch  # noqa: F401
    except Exception as err:  # noqa: BLE001 - any import failure means "not here"
        return f"import failed: {type(err).__name__}: {err}"
    return None


def thread_count(impl: str, threads: int) -> int:
    """The thread count an implementation actually runs with."""
    if impl in THREAD_AWARE:
        return threads
    if impl == "numpy":
        return 1
    if impl.startswith("fusedopt-keras"):
        return fusedopt.get_num_threads()
    import tensorflow as tf

    return tf.config.threading.get_intra_op_parallelism_threads() or (os.cpu_count() or 1)


def set_threads(threads: int) -> None:
    """Set the thread count of fusedopt and (when loaded) PyTorch."""
    fusedopt.set_num_threads(threads)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)


# -- fusedopt --------------------------------------------------------------------------


def _call_dropout(fn: Callable[..., Any], x: np.ndarray, seed: int) -> Any:
    names = inspect.signature(fn).parameters
    kwargs: dict[str, Any] = {}
    if "seed" in names:
        kwargs["seed"] = seed
    if "rate" in names:
        return fn(x, rate=DROPOUT_RATE, **kwargs)
    return fn(x, DROPOUT_RATE, **kwargs)


def _fusedopt(rule: Rule, params: list, grads: list, dtype: str, seed: int) -> Step:
    if rule.kind == "dropout":
        fn = getattr(fusedopt.ops, "dropout", None)
        if fn is None:
            raise Unavailable("fusedopt.ops.dropout is not in this build")
        return lambda: [_call_dropout(fn, x, seed) for x in params]
    cls = getattr(fusedopt, rule.cls or "", None)
    if cls is None:
        raise Unavailable(f"fusedopt.{rule.cls} does not exist")
    try:
        opt = cls([p.copy() for p in params], **rule.kwargs)
    except TypeError as err:
        if "l2" in rule.kwargs:
            raise Unavailable(f"fusedopt.{rule.cls} takes no l2= in this build ({err})") from err
        raise
    return lambda: opt.step(grads)


def _roofline(rule: Rule, params: list, grads: list, dtype: str, seed: int) -> Step:
    outputs = [[np.zeros_like(p) for p in params] for _ in range(rule.roofline_outputs)]
    inputs = params if rule.kind == "dropout" else grads
    return lambda: _core.stream_roofline(outputs, inputs)


# -- Keras and TensorFlow ---------------------------------------------------------------


def _keras(rule: Rule, params: list, grads: list, dtype: str, seed: int, *, mode: str,
           fused: bool = False) -> Step:
    import keras
    import tensorflow as tf

    if rule.kind == "dropout":
        if fused:
            raise Unavailable("fusedopt.keras has no functional dropout (use its Dropout layer)")
        xs = [tf.constant(x) for x in params]
        generator = keras.random.SeedGenerator(seed)

        def dropout() -> list:
            return [keras.random.dropout(x, DROPOUT_RATE, seed=generator) for x in xs]
        return dropout if mode == "eager" else tf.function(dropout, jit_compile=mode == "xla")

    module = importlib.import_module("fusedopt.keras") if fused else keras.optimizers
    where = "fusedopt.keras" if fused else "keras.optimizers"
    cls = getattr(module, rule.cls or "", None)
    if cls is None:
        raise Unavailable(f"{where}.{rule.cls} does not exist")
    kwargs = dict(rule.kwargs)
    l2 = 0.0 if fused else kwargs.pop("l2", 0.0)  # built-in: add 2*l2*w to the gradient in-graph
    try:
        opt = cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise Unavailable(f"{where}.{rule.cls}(**{kwargs}) failed: {err}") from err
    variables = [keras.Variable(p.copy(), dtype=dtype, name=f"w{i}") for i, p in enumerate(params)]
    tgrads = [tf.constant(g) for g in grads]
    opt.build(variables)
    if fused:
        # fusedopt.keras.Muon updates its Muon (matrix) variables with Keras's
        # Muon by design: a case of them would time Keras's update, not the op.
        by_design = [v for v in variables if not opt._fused_variable_ok(v)]
        if by_design:
            raise Unavailable(f"{where}.{rule.cls} keeps Keras's own update for {len(by_design)} of the "
                              f"{len(variables)} variables by design (see its docstring), so this case "
                              "would not time the fused op")

    def apply() -> None:
        gs = tgrads if not l2 else [g + (2 * l2) * v.value for g, v in zip(tgrads, variables)]
        opt.apply_gradients(zip(gs, variables))
    return apply if mode == "eager" else tf.function(apply, jit_compile=mode == "xla")


def _raw_calls(name: str) -> tuple[list[float], Callable[..., dict]]:
    """Slot initial values and the keyword arguments of one rule's raw op."""
    adam = dict(beta1_power=0.9, beta2_power=0.999, lr=1e-3, beta1=0.9, beta2=0.999, epsilon=1e-7)
    table: dict[str, tuple[list[float], Callable[..., dict]]] = {
        "sgd": ([], lambda v, s, g: dict(var=v, alpha=0.01, delta=g)),
        "sgd_momentum": ([0.0], lambda v, s, g: dict(var=v, accum=s[0], lr=0.01, grad=g, momentum=0.9,
                                                     use_nesterov=False)),
        "sgd_nesterov": ([0.0], lambda v, s, g: dict(var=v, accum=s[0], lr=0.01, grad=g, momentum=0.9,
                                                     use_nesterov=True)),
        "rmsprop": ([0.0, 0.0], lambda v, s, g: dict(var=v, ms=s[0], mom=s[1], lr=1e-3, rho=0.9,
                                                     momentum=0.0, epsilon=1e-7, grad=g)),
        "rmsprop_centered": ([0.0, 0.0, 0.0], lambda v, s, g: dict(
            var=v, mg=s[0], ms=s[1], mom=s[2], lr=1e-3, rho=0.9, momentum=0.0, epsilon=1e-7, grad=g)),
        "adagrad": ([0.1], lambda v, s, g: dict(var=v, accum=s[0], lr=1e-3, epsilon=1e-7, grad=g)),
        "adadelta": ([0.0, 0.0], lambda v, s, g: dict(var=v, accum=s[0], accum_update=s[1], lr=1e-3,
                                                      rho=0.95, epsilon=1e-7, grad=g)),
        "adam": ([0.0, 0.0], lambda v, s, g: dict(var=v, m=s[0], v=s[1], grad=g, **adam)),
        "adam_amsgrad": ([0.0, 0.0, 0.0], lambda v, s, g: dict(var=v, m=s[0], v=s[1], vhat=s[2],
                                                               grad=g, **adam)),
        "adamax": ([0.0, 0.0], lambda v, s, g: dict(var=v, m=s[0], v=s[1], beta1_power=0.9, lr=1e-3,
                                                    beta1=0.9, beta2=0.999, epsilon=1e-7, grad=g)),
        "ftrl": ([0.1, 0.0], lambda v, s, g: dict(var=v, accum=s[0], linear=s[1], grad=g, lr=1e-3,
                                                  l1=0.0, l2=0.0, l2_shrinkage=0.0, lr_power=-0.5)),
    }
    return table[name]


def _tf_raw(rule: Rule, params: list, grads: list, dtype: str, seed: int) -> Step:
    import tensorflow as tf

    if rule.tf_raw is None:
        raise Unavailable("TensorFlow has no ResourceApply* op for this rule")
    op = getattr(tf.raw_ops, rule.tf_raw)
    slot_values, arguments = _raw_calls(rule.name)
    dt = tf.as_dtype(dtype)
    variables = [tf.Variable(p.copy()) for p in params]
    slots = [[tf.Variable(np.full_like(p, value)) for value in slot_values] for p in params]
    tgrads = [tf.constant(g) for g in grads]

    def cast(value: Any) -> Any:
        return tf.constant(value, dt) if isinstance(value, float) else value

    @tf.function
    def step() -> None:
        for v, s, g in zip(variables, slots, tgrads):
            kwargs = arguments(v.handle, [x.handle for x in s], g)
            op(**{k: cast(x) for k, x in kwargs.items()})
    return step


# -- PyTorch and NumPy ----------------------------------------------------------------------


def _torch(rule: Rule, params: list, grads: list, dtype: str, seed: int, *, flavor: str) -> Step:
    import torch

    if rule.torch is None or getattr(torch.optim, rule.torch[0], None) is None:
        raise Unavailable(f"torch.optim {torch.__version__} has no such optimizer")
    name, kwargs = rule.torch
    cls = getattr(torch.optim, name)
    if flavor not in inspect.signature(cls).parameters:
        raise Unavailable(f"the torch.optim class has no {flavor}= implementation")
    tensors = [torch.from_numpy(p.copy()) for p in params]
    for t, g in zip(tensors, grads):
        t.grad = torch.from_numpy(g)
    try:
        opt = cls(tensors, **kwargs, **{flavor: True})
    except (RuntimeError, ValueError) as err:
        raise Unavailable(f"torch.optim.{name}({flavor}=True) failed: {err}") from err
    return opt.step


def _numpy(rule: Rule, params: list, grads: list, dtype: str, seed: int) -> Step:
    if rule.kind != "dropout" and rule.name not in reference.STEPS:
        raise Unavailable(f"the NumPy reference has no {rule.name} step")
    copies = params if rule.kind == "dropout" else [p.copy() for p in params]
    return reference.make_step(rule.name, copies, grads, seed)


FACTORIES: dict[str, Callable[..., Step]] = {
    "roofline": _roofline,
    "fusedopt": _fusedopt,
    "fusedopt-keras": functools.partial(_keras, mode="function", fused=True),
    "fusedopt-keras-xla": functools.partial(_keras, mode="xla", fused=True),
    "keras-function": functools.partial(_keras, mode="function"),
    "keras-xla": functools.partial(_keras, mode="xla"),
    "keras-eager": functools.partial(_keras, mode="eager"),
    "tf-raw": _tf_raw,
    "torch-fused": functools.partial(_torch, flavor="fused"),
    "torch-foreach": functools.partial(_torch, flavor="foreach"),
    "numpy": _numpy,
}


def what_ran(impl: str, rule: Rule, step: Step, variables: int) -> dict[str, Any]:
    """Record fields saying what a measured `step` of `impl` ran, read from its trace.

    fusedopt-keras(-xla): ``fused`` (True: the fused op updated all `variables`; under
    XLA it is compiled as the op's custom call); where fusedopt.keras fell back to
    Keras's update, `fused_op.KerasFallback`.
    """
    if not impl.startswith("fusedopt-keras"):
        return {}
    return {"fused": fused_op.require_fused(fused_op.tf_function_nodes(step), variables,
                                            f"fusedopt.keras.{rule.cls}")}


def make_step(impl: str, rule: Rule, params: list, grads: list, dtype: str, seed: int = 0) -> Step:
    """Fresh state for `impl` on (rule, params); a callable running one step."""
    problem = library_problem(impl)
    if problem:
        raise Unavailable(problem)
    return FACTORIES[impl](rule, params, grads, dtype, seed)
