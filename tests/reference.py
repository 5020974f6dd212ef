"""A short float64 NumPy reference of every rule, written from Keras 3's
`update_step`s (keras/src/optimizers/*.py) and `BaseOptimizer._apply_weight_decay`
(``p -= p * wd * lr``, applied before the rule with the step's learning rate).

`Reference(name, kwargs, params)` mirrors a fusedopt optimizer: `params`,
`slots` (Keras's slot names and order), `iterations`, `u_product` (Nadam) and
`step(grads)`. Defaults are Keras's, written out here (not read from fusedopt).
`dtype` (float64 by default) is the dtype the arrays are kept and computed
in: a float32 run shows how much rounding the same formulas lose in float32.
"""

from __future__ import annotations

import math

import numpy as np

KERAS_DEFAULTS = {
    "SGD": dict(learning_rate=0.01, momentum=0.0, nesterov=False, dampened=False),
    "RMSprop": dict(learning_rate=0.001, rho=0.9, momentum=0.0, epsilon=1e-7, centered=False),
    "Adagrad": dict(learning_rate=0.001, initial_accumulator_value=0.1, epsilon=1e-7),
    "Adadelta": dict(learning_rate=0.001, rho=0.95, epsilon=1e-7),
    "Adam": dict(learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7, amsgrad=False),
    "AdamW": dict(learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7, amsgrad=False,
                  weight_decay=0.004),
    "Adamax": dict(learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7),
    "Nadam": dict(learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7),
    "Ftrl": dict(learning_rate=0.001, learning_rate_power=-0.5, initial_accumulator_value=0.1,
                 l1_regularization_strength=0.0, l2_regularization_strength=0.0,
                 l2_shrinkage_regularization_strength=0.0, beta=0.0),
    "Lion": dict(learning_rate=0.001, beta_1=0.9, beta_2=0.99),
    "Lamb": dict(learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7),
    "Adafactor": dict(learning_rate=0.001, beta_2_decay=-0.8, epsilon_1=1e-30, epsilon_2=1e-3,
                      clip_threshold=1.0, relative_step=True),
    # x_from_new_z (not a Keras argument): recover x with the updated z, as
    # Keras on TensorFlow does (its `momentum.value` is read after the update).
    "ScheduleFreeAdamW": dict(learning_rate=0.0025, beta_1=0.9, beta_2=0.999, epsilon=1e-8,
                              warmup_steps=0, x_from_new_z=False),
    "Muon": dict(learning_rate=0.001, adam_beta_1=0.9, adam_beta_2=0.999, adam_weight_decay=0.004,
                 epsilon=1e-7, weight_decay=0.004, muon_a=3.4445, muon_b=-4.7750, muon_c=2.0315,
                 adam_lr_ratio=1.0, momentum=0.95, ns_steps=5, nesterov=True, rms_rate=0.2),
    # Not in Keras: the defaults of the Adan authors' reference implementation.
    "Adan": dict(learning_rate=0.001, beta_1=0.98, beta_2=0.92, beta_3=0.99, epsilon=1e-8),
}


def slot_names(name: str, h: dict) -> list[str]:
    """Keras's slot order for optimizer `name` with hyperparameters `h`."""
    if name == "SGD":
        return ["momentum"] if h["momentum"] != 0 else []
    if name == "RMSprop":
        return ["velocity"] + (["momentum"] if h["momentum"] > 0 else []) + (
            ["average_gradient"] if h["centered"] else [])
    return {
        "Adagrad": ["accumulator"],
        "Adadelta": ["accumulated_grad", "accumulated_delta_var"],
        "Adam": ["momentum", "velocity"] + (["velocity_hat"] if h.get("amsgrad") else []),
        "AdamW": ["momentum", "velocity"] + (["velocity_hat"] if h.get("amsgrad") else []),
        "Adamax": ["momentum", "norm"],
        "Nadam": ["momentum", "velocity"],
        "Ftrl": ["accumulator", "linear"],
        "Lion": ["momentum"],
        "Lamb": ["momentum", "velocity"],
        "Adafactor": ["r", "c", "velocity"],
        "ScheduleFreeAdamW": ["momentum", "velocity"],
        "Muon": ["momentum", "velocity"],
        "Adan": ["momentum", "difference_momentum", "velocity", "previous_gradient"],
    }[name]


def newton_schulz5(x: np.ndarray, steps: int, a: float, b: float, c: float) -> np.ndarray:
    """Keras's Muon.zeropower_via_newtonschulz5 for a 2-D array."""
    transposed = x.shape[0] > x.shape[1]
    if transposed:
        x = x.T
    x = x / (np.linalg.norm(x) + 1e-7)
    for _ in range(steps):
        temp_a = x @ x.T
        temp_b = b * temp_a + (c * temp_a) @ temp_a
        x = a * x + temp_b @ x
    return x.T if transposed else x


def _rms(x):
    return math.sqrt(float(np.mean(np.square(x))))


class Reference:
    def __init__(self, name: str, kwargs: dict, params, use_adam=None, dtype=np.float64):
        self.name = name
        self.dtype = np.dtype(dtype)
        self.h = {**KERAS_DEFAULTS[name], **kwargs}
        self.params = [np.array(p, dtype=dtype) for p in params]
        self.iterations = 0
        self.u_product = 1.0
        h, ps = self.h, self.params
        self.slots = {s: [np.zeros_like(p) for p in ps] for s in slot_names(name, h)}
        if name in ("Adagrad", "Ftrl"):
            self.slots["accumulator"] = [np.full_like(p, h["initial_accumulator_value"]) for p in ps]
        if name == "ScheduleFreeAdamW":
            self.slots["momentum"] = [p.copy() for p in ps]
        if name == "Adafactor":
            self.slots["r"] = [np.zeros(p.shape[:-1] if p.ndim >= 2 else (), dtype) for p in ps]
            self.slots["c"] = [np.zeros(p.shape[:-2] + p.shape[-1:] if p.ndim >= 2 else (), dtype)
                               for p in ps]
        if name == "Muon":
            self.use_adam = [p.ndim != 2 for p in ps] if use_adam is None else list(use_adam)
            self.slots["velocity"] = [np.zeros_like(p) if a else None for p, a in zip(ps, self.use_adam)]

    def learning_rate(self) -> float:
        lr = self.h["learning_rate"]
        return float(lr(self.iterations)) if callable(lr) else float(lr)

    def step(self, grads) -> None:
        h = self.h
        lr = self.learning_rate()
        t = self.iterations + 1
        grads = [np.asarray(g, self.dtype) for g in grads]
        if self.name == "Nadam":
            self.u_product *= h["beta_1"] * (1.0 - 0.5 * 0.96 ** t)
        for i, g in enumerate(grads):
            slots = {k: v[i] for k, v in self.slots.items()}
            p = self.params[i]
            # BaseOptimizer._apply_weight_decay (Muon: its own override).
            if self.name == "Muon":
                wd = h["adam_weight_decay"] if self.use_adam[i] else h["weight_decay"]
            else:
                wd = h.get("weight_decay")
            if wd:
                p -= p * wd * lr
            getattr(self, "_" + self.name.lower())(p, g, slots, lr, t)
            for k, v in slots.items():
                if v is not None:
                    self.slots[k][i][...] = v
        self.iterations += 1

    # -- one method per rule: p and the slot arrays are updated in place ------
    def _sgd(self, p, g, s, lr, t):
        h = self.h
        mu = h["momentum"]
        if mu == 0:
            p -= g * lr
        elif h["dampened"]:  # not in Keras: classic averaged momentum
            m = s["momentum"]
            m[...] = mu * m + (1 - mu) * g
            p -= lr * m
        else:
            m = s["momentum"]
            m[...] = m * mu - g * lr
            p += (m * mu - g * lr) if h["nesterov"] else m

    def _rmsprop(self, p, g, s, lr, t):
        h = self.h
        rho = h["rho"]
        v = s["velocity"]
        v[...] = rho * v + (1 - rho) * g * g
        if h["centered"]:
            a = s["average_gradient"]
            a[...] = rho * a + (1 - rho) * g
            denominator = v - a * a + h["epsilon"]
        else:
            denominator = v + h["epsilon"]
        increment = lr * g / np.sqrt(denominator)
        if h["momentum"] > 0:
            m = s["momentum"]
            m[...] = h["momentum"] * m + increment
            p -= m
        else:
            p -= increment

    def _adagrad(self, p, g, s, lr, t):
        acc = s["accumulator"]
        acc += g * g
        p -= lr * g / np.sqrt(acc + self.h["epsilon"])

    def _adadelta(self, p, g, s, lr, t):
        h = self.h
        rho, eps = h["rho"], h["epsilon"]
        ag, ad = s["accumulated_grad"], s["accumulated_delta_var"]
        ag[...] = rho * ag + (1 - rho) * g * g
        delta = -(np.sqrt(ad + eps) * g / np.sqrt(ag + eps))
        ad[...] = rho * ad + (1 - rho) * delta * delta
        p += lr * delta

    def _adam_rule(self, p, g, m, v, vhat, lr, t, beta_1, beta_2, eps):
        alpha = lr * math.sqrt(1 - beta_2 ** t) / (1 - beta_1 ** t)
        m += (g - m) * (1 - beta_1)
        v += (g * g - v) * (1 - beta_2)
        if vhat is not None:
            vhat[...] = np.maximum(vhat, v)
            v = vhat
        p -= m * alpha / (np.sqrt(v) + eps)

    def _adam(self, p, g, s, lr, t):
        h = self.h
        self._adam_rule(p, g, s["momentum"], s["velocity"], s.get("velocity_hat"), lr, t,
                        h["beta_1"], h["beta_2"], h["epsilon"])

    _adamw = _adam

    def _adamax(self, p, g, s, lr, t):
        h = self.h
        m, u = s["momentum"], s["norm"]
        m += (g - m) * (1 - h["beta_1"])
        u[...] = np.maximum(h["beta_2"] * u, np.abs(g))
        p -= lr * m / ((1 - h["beta_1"] ** t) * (u + h["epsilon"]))

    def _nadam(self, p, g, s, lr, t):
        h = self.h
        b1, b2 = h["beta_1"], h["beta_2"]
        u_t = b1 * (1 - 0.5 * 0.96 ** t)
        u_t_1 = b1 * (1 - 0.5 * 0.96 ** (t + 1))
        u_product_t = self.u_product  # already advanced for this step
        u_product_t_1 = u_product_t * u_t_1
        m, v = s["momentum"], s["velocity"]
        m += (g - m) * (1 - b1)
        v += (g * g - v) * (1 - b2)
        m_hat = u_t_1 * m / (1 - u_product_t_1) + (1 - u_t) * g / (1 - u_product_t)
        v_hat = v / (1 - b2 ** t)
        p -= m_hat * lr / (np.sqrt(v_hat) + h["epsilon"])

    def _ftrl(self, p, g, s, lr, t):
        h = self.h
        power = -h["learning_rate_power"]
        acc, lin = s["accumulator"], s["linear"]
        l2 = h["l2_regularization_strength"] + h["beta"] / (2.0 * lr)
        grad_to_use = g + 2 * h["l2_shrinkage_regularization_strength"] * p
        new_acc = acc + g * g
        lin += grad_to_use - (new_acc ** power - acc ** power) / lr * p
        quadratic = new_acc ** power / lr + 2 * l2
        l1 = h["l1_regularization_strength"]
        p[...] = (np.clip(lin, -l1, l1) - lin) / quadratic
        acc[...] = new_acc

    def _lion(self, p, g, s, lr, t):
        h = self.h
        m = s["momentum"]
        p -= lr * np.sign(m * h["beta_1"] + g * (1 - h["beta_1"]))
        m[...] = m * h["beta_2"] + g * (1 - h["beta_2"])

    def _lamb(self, p, g, s, lr, t):
        h = self.h
        b1, b2 = h["beta_1"], h["beta_2"]
        m, v = s["momentum"], s["velocity"]
        m += (g - m) * (1 - b1)
        v += (g * g - v) * (1 - b2)
        update = (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + h["epsilon"])
        w_norm = math.sqrt(float(np.sum(p * p)))
        g_norm = math.sqrt(float(np.sum(update * update)))
        ratio = w_norm / g_norm if w_norm > 0 and g_norm > 0 else 1.0
        p -= ratio * lr * update

    def _adafactor(self, p, g, s, lr, t):
        h = self.h
        # np.maximum/np.minimum, as Keras's ops.maximum/minimum: NaN propagates
        # (Python's max(1.0, nan) is 1.0).
        rho_t = np.minimum(lr, 1 / math.sqrt(t))
        alpha_t = np.maximum(h["epsilon_2"], _rms(p)) * rho_t
        sq = g * g + h["epsilon_1"]
        beta_2_t = 1 - t ** h["beta_2_decay"]
        r, c, v = s["r"], s["c"], s["velocity"]
        if p.ndim >= 2:
            r[...] = beta_2_t * r + (1 - beta_2_t) * sq.mean(axis=-1)
            c[...] = beta_2_t * c + (1 - beta_2_t) * sq.mean(axis=-2)
            v[...] = (r / r.mean(axis=-1, keepdims=True))[..., None] * c[..., None, :]
        else:
            v[...] = beta_2_t * v + (1 - beta_2_t) * sq
        u = g / np.sqrt(v)
        u_hat = u / np.maximum(1.0, _rms(u) / h["clip_threshold"])
        p -= alpha_t * u_hat

    def _schedulefreeadamw(self, p, g, s, lr, t):
        h = self.h
        b1, b2 = h["beta_1"], h["beta_2"]
        if h["warmup_steps"] > 0:
            lr = lr * min(t / h["warmup_steps"], 1.0)
        z, v = s["momentum"], s["velocity"]
        z_old = z.copy()
        v += (g * g - v) * (1 - b2)
        denom = np.sqrt(v / (1 - b2 ** t)) + h["epsilon"]
        z -= lr * g / denom
        weight = 1.0 / t
        x_old = (p - (1 - b1) * (z if h["x_from_new_z"] else z_old)) / b1
        x_new = (1 - weight) * x_old + weight * z
        p[...] = (1 - b1) * z + b1 * x_new

    def _muon(self, p, g, s, lr, t):
        h = self.h
        m = s["momentum"]
        if s["velocity"] is not None:  # Keras's _adamw_update_step
            self._adam_rule(p, g, m, s["velocity"], None, lr * h["adam_lr_ratio"], t,
                            h["adam_beta_1"], h["adam_beta_2"], h["epsilon"])
            return
        mu = h["momentum"]
        m += g + m * (mu - 1)
        d = g + mu * m if h["nesterov"] else m
        update = lr * newton_schulz5(d, h["ns_steps"], h["muon_a"], h["muon_b"], h["muon_c"])
        if h["rms_rate"] is not None:
            update = update * math.sqrt(max(p.shape)) * h["rms_rate"]
        p -= update

    def _adan(self, p, g, s, lr, t):
        """Xie et al. 2022, Algorithm 1, in the reference implementation's form
        (betas as decay rates, bias-corrected, the first step's difference 0)."""
        h = self.h
        b1, b2, b3 = h["beta_1"], h["beta_2"], h["beta_3"]
        m, v, n = s["momentum"], s["difference_momentum"], s["velocity"]
        previous = s["previous_gradient"]
        d = np.zeros_like(g) if t == 1 else g - previous
        m[...] = b1 * m + (1 - b1) * g
        v[...] = b2 * v + (1 - b2) * d
        n[...] = b3 * n + (1 - b3) * (g + b2 * d) ** 2
        previous[...] = g
        m_hat = m / (1 - b1 ** t)
        v_hat = v / (1 - b2 ** t)
        n_hat = n / (1 - b3 ** t)
        p -= lr * (m_hat + b2 * v_hat) / (np.sqrt(n_hat) + h["epsilon"])
