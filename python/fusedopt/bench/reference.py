"""NumPy reference implementations: what one would write without fusedopt.

Each rule is a plain vectorized NumPy update per tensor, following Keras's
formulas and defaults (epsilon placement, bias corrections). They are the
"numpy" baseline of `fusedopt bench`; the numerical tests have their own
float64 reference.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np

from fusedopt.bench.rules import DROPOUT_RATE, L2

State = dict[str, Any]
Step = Callable[[list, list, State, int], None]

B1, B2, EPS = 0.9, 0.999, 1e-7


def _adam_core(p: np.ndarray, g: np.ndarray, m: np.ndarray, v: np.ndarray, t: int,
               lr: float = 1e-3, vhat: np.ndarray | None = None) -> None:
    alpha = lr * math.sqrt(1 - B2**t) / (1 - B1**t)
    m += (g - m) * (1 - B1)
    v += (np.square(g) - v) * (1 - B2)
    if vhat is not None:
        np.maximum(vhat, v, out=vhat)
        v = vhat
    p -= alpha * m / (np.sqrt(v) + EPS)


def _sgd(ps, gs, s, t, lr=0.01, momentum=0.0, nesterov=False):
    for i, (p, g) in enumerate(zip(ps, gs)):
        if momentum == 0:
            p -= lr * g
            continue
        m = s["m"][i]
        m *= momentum
        m -= lr * g
        p += momentum * m - lr * g if nesterov else m


def _rmsprop(ps, gs, s, t, lr=1e-3, rho=0.9, centered=False):
    for i, (p, g) in enumerate(zip(ps, gs)):
        v = s["v"][i]
        v *= rho
        v += (1 - rho) * np.square(g)
        denominator = v + EPS
        if centered:
            a = s["a"][i]
            a *= rho
            a += (1 - rho) * g
            denominator -= np.square(a)
        p -= lr * g / np.sqrt(denominator)


def _adagrad(ps, gs, s, t, lr=1e-3):
    for p, g, a in zip(ps, gs, s["a"]):
        a += np.square(g)
        p -= lr * g / np.sqrt(a + EPS)


def _adadelta(ps, gs, s, t, lr=1e-3, rho=0.95):
    for p, g, ag, ad in zip(ps, gs, s["ag"], s["ad"]):
        ag *= rho
        ag += (1 - rho) * np.square(g)
        delta = -np.sqrt(ad + EPS) * g / np.sqrt(ag + EPS)
        ad *= rho
        ad += (1 - rho) * np.square(delta)
        p += lr * delta


def _adam(ps, gs, s, t, weight_decay=0.0, l2=0.0, amsgrad=False):
    for i, (p, g) in enumerate(zip(ps, gs)):
        if weight_decay:
            p -= p * (weight_decay * 1e-3)
        if l2:
            g = g + (2 * l2) * p
        _adam_core(p, g, s["m"][i], s["v"][i], t, vhat=s["vhat"][i] if amsgrad else None)


def _adamax(ps, gs, s, t, lr=1e-3):
    for p, g, m, u in zip(ps, gs, s["m"], s["v"]):
        m += (g - m) * (1 - B1)
        np.maximum(B2 * u, np.abs(g), out=u)
        p -= lr * m / ((1 - B1**t) * (u + EPS))


def _nadam(ps, gs, s, t, lr=1e-3):
    u_t = B1 * (1 - 0.5 * 0.96**t)
    u_t1 = B1 * (1 - 0.5 * 0.96 ** (t + 1))
    product_t = s["u_product"] * u_t
    product_t1 = product_t * u_t1
    s["u_product"] = product_t
    for p, g, m, v in zip(ps, gs, s["m"], s["v"]):
        m += (g - m) * (1 - B1)
        v += (np.square(g) - v) * (1 - B2)
        m_hat = u_t1 * m / (1 - product_t1) + (1 - u_t) * g / (1 - product_t)
        p -= lr * m_hat / (np.sqrt(v / (1 - B2**t)) + EPS)


def _ftrl(ps, gs, s, t, lr=1e-3, power=-0.5):
    for i, (p, g) in enumerate(zip(ps, gs)):
        accum, linear = s["a"][i], s["l"][i]
        new_accum = accum + np.square(g)
        linear += g - (np.power(new_accum, -power) - np.power(accum, -power)) / lr * p
        quadratic = np.power(new_accum, -power) / lr
        p[...] = (np.clip(linear, 0.0, 0.0) - linear) / quadratic
        accum[...] = new_accum


def _lion(ps, gs, s, t, lr=1e-3, b1=0.9, b2=0.99):
    for p, g, m in zip(ps, gs, s["m"]):
        p -= lr * np.sign(b1 * m + (1 - b1) * g)
        m *= b2
        m += (1 - b2) * g


def _lamb(ps, gs, s, t, lr=1e-3):
    for p, g, m, v in zip(ps, gs, s["m"], s["v"]):
        m += (g - m) * (1 - B1)
        v += (np.square(g) - v) * (1 - B2)
        update = (m / (1 - B1**t)) / (np.sqrt(v / (1 - B2**t)) + EPS)
        w_norm, u_norm = np.linalg.norm(p), np.linalg.norm(update)
        ratio = w_norm / u_norm if w_norm > 0 and u_norm > 0 else 1.0
        p -= (lr * ratio) * update


def _adafactor(ps, gs, s, t, lr=1e-3, decay=-0.8, eps1=1e-30, eps2=1e-3, clip=1.0):
    rho = min(lr, 1 / math.sqrt(t))
    beta = 1 - t**decay
    for p, g, r, c in zip(ps, gs, s["r"], s["c"]):
        alpha = max(eps2, float(np.sqrt(np.mean(np.square(p))))) * rho
        squared = np.square(g) + eps1
        r[...] = beta * r + (1 - beta) * squared.mean(axis=-1)
        c[...] = beta * c + (1 - beta) * squared.mean(axis=-2)
        v = (r / r.mean(axis=-1, keepdims=True))[..., :, None] * c[..., None, :]
        u = g / np.sqrt(v)
        u /= max(1.0, float(np.sqrt(np.mean(np.square(u)))) / clip)
        p -= alpha * u


def _schedule_free_adamw(ps, gs, s, t, lr=0.0025, b1=0.9, eps=1e-8):
    for p, g, z, v in zip(ps, gs, s["m"], s["v"]):
        v *= B2
        v += (1 - B2) * np.square(g)
        x = (p - (1 - b1) * z) / b1
        z -= lr * g / (np.sqrt(v / (1 - B2**t)) + eps)
        x *= 1 - 1 / t
        x += z / t
        p[...] = (1 - b1) * z + b1 * x


def _newton_schulz(x: np.ndarray, steps: int = 5) -> np.ndarray:
    a, b, c = 3.4445, -4.7750, 2.0315
    transposed = x.shape[0] > x.shape[1]
    x = x.T if transposed else x
    x = x / (np.linalg.norm(x) + 1e-7)
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if transposed else x


def _muon(ps, gs, s, t, lr=1e-3, momentum=0.95, weight_decay=0.004, rms_rate=0.2):
    for p, g, m in zip(ps, gs, s["m"]):
        m *= momentum
        m += g
        update = _newton_schulz(g + momentum * m)
        p -= p * (weight_decay * lr)
        p -= (lr * math.sqrt(max(p.shape)) * rms_rate) * update


def _zeros(ps: list) -> list:
    return [np.zeros_like(p) for p in ps]


def make_state(rule: str, params: list) -> State:
    """The slots a rule's reference step needs, Keras's initial values."""
    full = lambda value: [np.full_like(p, value) for p in params]  # noqa: E731
    if rule in ("sgd_momentum", "sgd_nesterov", "lion", "muon"):
        return {"m": _zeros(params)}
    if rule in ("rmsprop", "rmsprop_centered"):
        return {"v": _zeros(params), "a": _zeros(params)}
    if rule == "adagrad":
        return {"a": full(0.1)}
    if rule == "adadelta":
        return {"ag": _zeros(params), "ad": _zeros(params)}
    if rule == "ftrl":
        return {"a": full(0.1), "l": _zeros(params)}
    if rule == "adafactor":
        return {"r": [np.zeros(p.shape[:-1], p.dtype) for p in params],
                "c": [np.zeros(p.shape[:-2] + p.shape[-1:], p.dtype) for p in params]}
    if rule == "schedule_free_adamw":
        return {"m": [p.copy() for p in params], "v": _zeros(params)}
    state: State = {"m": _zeros(params), "v": _zeros(params), "u_product": 1.0}
    if rule == "adam_amsgrad":
        state["vhat"] = _zeros(params)
    return state


STEPS: dict[str, Step] = {
    "sgd": _sgd,
    "sgd_momentum": lambda ps, gs, s, t: _sgd(ps, gs, s, t, momentum=0.9),
    "sgd_nesterov": lambda ps, gs, s, t: _sgd(ps, gs, s, t, momentum=0.9, nesterov=True),
    "rmsprop": _rmsprop,
    "rmsprop_centered": lambda ps, gs, s, t: _rmsprop(ps, gs, s, t, centered=True),
    "adagrad": _adagrad,
    "adadelta": _adadelta,
    "adam": _adam,
    "adam_amsgrad": lambda ps, gs, s, t: _adam(ps, gs, s, t, amsgrad=True),
    "adamw": lambda ps, gs, s, t: _adam(ps, gs, s, t, weight_decay=0.004),
    "adam_l2": lambda ps, gs, s, t: _adam(ps, gs, s, t, l2=L2),
    "adamax": _adamax,
    "nadam": _nadam,
    "ftrl": _ftrl,
    "lion": _lion,
    "lamb": _lamb,
    "adafactor": _adafactor,
    "schedule_free_adamw": _schedule_free_adamw,
    "muon": _muon,
}


def make_step(rule: str, params: list, grads: list, seed: int = 0) -> Callable[[], Any]:
    """A no-argument callable running one reference step (dropout: one mask draw)."""
    if rule == "dropout":
        rng = np.random.default_rng(seed)
        keep = 1.0 - DROPOUT_RATE

        def dropout() -> list:
            return [np.where(rng.random(x.shape, x.dtype) >= DROPOUT_RATE, x / x.dtype.type(keep), 0)
                    for x in params]
        return dropout
    state = make_state(rule, params)
    step_fn = STEPS[rule]
    counter = [0]

    def step() -> None:
        counter[0] += 1
        step_fn(params, grads, state, counter[0])
    return step
