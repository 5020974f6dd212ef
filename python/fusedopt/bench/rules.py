"""What the benchmark runs: update rules, size cases, and the bytes each rule moves.

One `Rule` row per benchmark case names the class every front end shares
(``fusedopt.X``, ``keras.optimizers.X``, ``fusedopt.keras.X``), the
PyTorch and TF raw-op counterparts where they exist, and the number of
full-size slots the rule reads and writes, from which the roofline's byte
count follows. The table holds the variants and peers; every other optimizer
of ``fusedopt.optimizers`` gets a default row from the engine's registry.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

#: L2 factor of the fused-regularization case ``adam_l2``: penalty ``L2 * sum(w**2)``.
L2 = 1e-4
#: Dropout rate of the ``dropout`` case.
DROPOUT_RATE = 0.5


@dataclass(frozen=True)
class Rule:
    """One benchmark case: an update rule (or dropout) and its counterparts."""

    name: str
    cls: str | None                       # class in fusedopt, keras.optimizers, fusedopt.keras
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    slots: int = 0                        # full-size slots read and written per element
    torch: tuple[str, Mapping[str, Any]] | None = None   # torch.optim class and kwargs
    tf_raw: str | None = None             # tf.raw_ops.ResourceApply* used per variable
    kind: str = "optimizer"               # "optimizer" or "dropout"

    def bytes_per_element(self, itemsize: int) -> float:
        """Minimal traffic per element: params, grads and slots read; params and slots written.

        Dropout reads x and writes y and a 1-bit mask. Factored or per-tensor
        state (Adafactor's r and c, LAMB's norms) is not counted.
        """
        if self.kind == "dropout":
            return 2 * itemsize + 0.125
        return itemsize * ((2 + self.slots) + (1 + self.slots))

    @property
    def roofline_outputs(self) -> int:
        """Arrays the roofline loop updates: params and slots (dropout: y), plus one input."""
        return 1 if self.kind == "dropout" else 1 + self.slots

    def roofline_bytes_per_element(self, itemsize: int) -> int:
        """Bytes per element of ``stream_roofline``: reads outputs + 1 arrays, writes outputs."""
        return itemsize * (2 * self.roofline_outputs + 1)


def _adam_torch(**extra: Any) -> tuple[str, dict[str, Any]]:
    return ("Adam", {"lr": 1e-3, "eps": 1e-7, **extra})


RULES: dict[str, Rule] = {r.name: r for r in [
    Rule("sgd", "SGD", {}, 0, ("SGD", {"lr": 0.01}), "ResourceApplyGradientDescent"),
    Rule("sgd_momentum", "SGD", {"momentum": 0.9}, 1, ("SGD", {"lr": 0.01, "momentum": 0.9}),
         "ResourceApplyKerasMomentum"),
    Rule("sgd_nesterov", "SGD", {"momentum": 0.9, "nesterov": True}, 1,
         ("SGD", {"lr": 0.01, "momentum": 0.9, "nesterov": True}), "ResourceApplyKerasMomentum"),
    Rule("rmsprop", "RMSprop", {}, 1, ("RMSprop", {"lr": 1e-3, "alpha": 0.9, "eps": 1e-7}),
         "ResourceApplyRMSProp"),
    Rule("rmsprop_centered", "RMSprop", {"centered": True}, 2,
         ("RMSprop", {"lr": 1e-3, "alpha": 0.9, "eps": 1e-7, "centered": True}),
         "ResourceApplyCenteredRMSProp"),
    Rule("adagrad", "Adagrad", {}, 1,
         ("Adagrad", {"lr": 1e-3, "eps": 1e-7, "initial_accumulator_value": 0.1}),
         "ResourceApplyAdagradV2"),
    Rule("adadelta", "Adadelta", {}, 2, ("Adadelta", {"lr": 1e-3, "rho": 0.95, "eps": 1e-7}),
         "ResourceApplyAdadelta"),
    Rule("adam", "Adam", {}, 2, _adam_torch(), "ResourceApplyAdam"),
    Rule("adam_amsgrad", "Adam", {"amsgrad": True}, 3, _adam_torch(amsgrad=True),
         "ResourceApplyAdamWithAmsgrad"),
    Rule("adamw", "AdamW", {}, 2, ("AdamW", {"lr": 1e-3, "eps": 1e-7, "weight_decay": 0.004})),
    Rule("adamax", "Adamax", {}, 2, ("Adamax", {"lr": 1e-3, "eps": 1e-7}), "ResourceApplyAdaMax"),
    Rule("nadam", "Nadam", {}, 2, ("NAdam", {"lr": 1e-3, "eps": 1e-7})),
    Rule("ftrl", "Ftrl", {}, 2, None, "ResourceApplyFtrlV2"),
    Rule("lion", "Lion", {}, 1),
    Rule("lamb", "Lamb", {}, 2),
    Rule("adafactor", "Adafactor", {}, 0, ("Adafactor", {"lr": 1e-3})),
    Rule("schedule_free_adamw", "ScheduleFreeAdamW", {}, 2),
    Rule("muon", "Muon", {}, 1, ("Muon", {"lr": 1e-3})),
    # Fused L2 regularization: Adam on g + 2*L2*w in the same pass (torch: coupled weight_decay).
    Rule("adam_l2", "Adam", {"l2": L2}, 2, _adam_torch(weight_decay=2 * L2)),
    Rule("dropout", None, {"rate": DROPOUT_RATE}, kind="dropout"),
]}


def _registry_rules() -> dict[str, Rule]:
    """A default case for every optimizer the table above does not name (a rule
    new to fusedopt.optimizers.__all__): its class with default arguments, its
    slot count from the engine's registry, no peers but Keras's (if Keras has
    one of the same name: the keras-* rows say when it does not)."""
    import fusedopt.optimizers
    from fusedopt import _core

    named = {r.cls for r in RULES.values()}
    out = {}
    for name in fusedopt.optimizers.__all__:
        engine_rule = getattr(getattr(fusedopt.optimizers, name), "_rule", None)
        if name in named or not isinstance(engine_rule, str):
            continue
        out[name.lower()] = Rule(name.lower(), name, {}, len(_core.rules()[engine_rule]["states"]))
    return out


RULES.update(_registry_rules())


@dataclass(frozen=True)
class SizeCase:
    """`count` tensors of `shape` each (2-D, so Adafactor factors and Muon orthogonalizes)."""

    name: str
    count: int
    shape: tuple[int, ...]
    description: str

    @property
    def elements(self) -> int:
        """Total number of parameters."""
        return self.count * math.prod(self.shape)


SIZES: dict[str, SizeCase] = {s.name: s for s in [
    SizeCase("large", 4, (2048, 2048), "16M params in 4 tensors"),
    SizeCase("small", 1000, (25, 40), "1M params in 1000 tensors"),
    SizeCase("tiny", 8, (16, 24), "3K params in 8 tensors (tests, --quick)"),
]}

DTYPES = ("float32", "float64")

#: Implementations, in table order. "roofline" is always measured.
IMPLEMENTATIONS = (
    "roofline",          # fusedopt._core.stream_roofline with the rule's bytes
    "fusedopt",          # fusedopt.X NumPy API
    "fusedopt-keras",    # fusedopt.keras.X, apply_gradients in tf.function
    "fusedopt-keras-xla",  # the same, tf.function(jit_compile=True): the op's XLA custom call
    "keras-function",    # keras.optimizers.X, apply_gradients in tf.function (jit_compile=False)
    "keras-xla",         # the same, tf.function(jit_compile=True)
    "keras-eager",       # keras.optimizers.X, eager apply_gradients
    "tf-raw",            # tf.raw_ops.ResourceApply* per variable in tf.function
    "torch-fused",       # torch.optim.X(fused=True)
    "torch-foreach",     # torch.optim.X(foreach=True)
    "numpy",             # NumPy reference (fusedopt.bench.reference)
)

#: Implementations whose thread count follows --threads; the others use their
#: library's own pool (TensorFlow: all cores; NumPy: one thread).
THREAD_AWARE = ("roofline", "fusedopt", "torch-fused", "torch-foreach")

#: The baseline that `speedup_vs_keras` divides by.
KERAS_BASELINE = "keras-function"
