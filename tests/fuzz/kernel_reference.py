"""The float64 reference of one engine call (a `fusedopt.ops` kernel, a TF
fused update op): tests/reference.py's rules over caller-given state, inside
the engine's documented pipeline

    g += l1 * sign(p) + 2 * l2 * p     (from p before the decay; 0 = off)
    p -= p * decay                     (decay = weight_decay * learning_rate)
    the rule
    p = sign(p) * max(|p| - learning_rate * proximal_l1, 0)

Differences from `Reference` (whose optimizers decide the variant from the
hyperparameters, as Keras does): the rule names the variant, so SGD's and
RMSprop's momentum slot is used whenever the rule has one, even with
momentum 0, and plain RMSprop ignores its momentum hyperparameter.
"""

from __future__ import annotations

import numpy as np

from fuzzlib import quiet
from reference import Reference

# engine rule -> (Reference optimizer name, fixed arguments)
RULES = {
    "sgd": ("SGD", {}),
    "sgd_momentum": ("SGD", {}),
    "sgd_nesterov": ("SGD", {"nesterov": True}),
    "sgd_dampened": ("SGD", {"dampened": True}),
    "rmsprop": ("RMSprop", {}),
    "rmsprop_momentum": ("RMSprop", {}),
    "rmsprop_centered": ("RMSprop", {"centered": True}),
    "rmsprop_centered_momentum": ("RMSprop", {"centered": True}),
    "adagrad": ("Adagrad", {}),
    "adadelta": ("Adadelta", {}),
    "adam": ("Adam", {}),
    "adam_amsgrad": ("Adam", {"amsgrad": True}),
    "adamax": ("Adamax", {}),
    "nadam": ("Nadam", {}),
    "ftrl": ("Ftrl", {}),
    "lion": ("Lion", {}),
    "lamb": ("Lamb", {}),
    "adafactor": ("Adafactor", {}),
    "schedule_free_adamw": ("ScheduleFreeAdamW", {}),
}


def reference_name(rule: str) -> tuple[str, dict]:
    """The reference optimizer and fixed arguments of an engine rule: the table
    above, else (a rule added since, one class per rule) the NumPy optimizer
    whose engine rule it is (the reference is keyed by class name)."""
    if rule in RULES:
        return RULES[rule]
    import fusedopt.optimizers

    for name in fusedopt.optimizers.__all__:
        if getattr(getattr(fusedopt.optimizers, name), "_rule", None) == rule:
            return name, {}
    raise KeyError(f"no reference optimizer for rule {rule!r}")


class KernelReference(Reference):
    """One engine call over `params` and `states` (name -> list), computed in
    `dtype` (float64; float32 to see what the formulas lose in float32)."""

    def __init__(self, rule: str, hyper: dict, params, states: dict, dtype=np.float64):
        self.rule = rule
        if rule == "muon_momentum":
            name, fixed = "Muon", {}
        else:
            name, fixed = reference_name(rule)
        h = {k: float(v) for k, v in hyper.items()}
        super().__init__(name, {**fixed, **h}, params, dtype=dtype)
        self.slots = {k: [np.array(s, dtype) for s in v] for k, v in states.items()}

    def call(self, grads, learning_rate: float, step: int, decay: float, l1: float = 0.0,
             l2: float = 0.0, proximal_l1: float = 0.0) -> None:
        lr = float(learning_rate)
        if self.name == "Nadam":
            self.u_product = self.h["u_product"]  # already this step's product
        with quiet():
            for i, g in enumerate(grads):
                p = self.params[i]
                if p.size == 0 and self.name == "Adafactor":
                    # Deviation, documented in rules/adafactor.h: an empty tensor
                    # is not updated. (Keras's statistic of a matrix with no
                    # rows or columns is a mean over nothing: NaN.)
                    continue
                g = np.array(g, self.dtype)
                if l1:
                    g = g + l1 * np.sign(p)
                if l2:
                    g = g + 2 * l2 * p
                if decay:
                    p -= p * decay
                slots = {k: v[i] for k, v in self.slots.items()}
                if self.rule == "muon_momentum":
                    self._muon_momentum(p, g, slots)
                else:
                    getattr(self, "_" + self.name.lower())(p, g, slots, lr, step)
                if proximal_l1:
                    p[...] = np.sign(p) * np.maximum(np.abs(p) - lr * proximal_l1, 0.0)

    # The rule decides the variant (see the module docstring).
    def _sgd(self, p, g, s, lr, t):
        if "momentum" not in s:
            p -= g * lr
            return
        mu, m = self.h["momentum"], s["momentum"]
        if self.h["dampened"]:
            m[...] = mu * m + (1 - mu) * g
            p -= lr * m
        else:
            m[...] = m * mu - g * lr
            p += (m * mu - g * lr) if self.h["nesterov"] else m

    def _rmsprop(self, p, g, s, lr, t):
        rho, eps = self.h["rho"], self.h["epsilon"]
        v = s["velocity"]
        v[...] = rho * v + (1 - rho) * g * g
        if "average_gradient" in s:
            a = s["average_gradient"]
            a[...] = rho * a + (1 - rho) * g
            denominator = v - a * a + eps
        else:
            denominator = v + eps
        increment = lr * g / np.sqrt(denominator)
        if "momentum" in s:
            m = s["momentum"]
            m[...] = self.h["momentum"] * m + increment
            p -= m
        else:
            p -= increment

    def _muon_momentum(self, d, g, s):
        """Keras's Muon momentum: m <- m + (g + m (mu - 1)); the direction
        written to the "param" buffer is g + mu m (nesterov) or m."""
        mu, m = self.h["momentum"], s["momentum"]
        m += g + m * (mu - 1)
        d[...] = g + mu * m if self.h["nesterov"] else m
