r"""The classic update rules side by side on a least-squares problem (NumPy API).

Minimize f(w) = 1/(2n) * ||X w - y||^2 over w (n=2000 samples, d=50 features
with column scales from 1 to 10, so the problem is ill-conditioned), with:

  gradient descent  w -= lr * grad f(w)                         (full batch)
  momentum          m = mu*m - lr*g; w += m                     (full batch; Polyak 1964)
  Nesterov          m = mu*m - lr*g; w += mu*m - lr*g           (full batch; Nesterov 1983,
                                                                 in Sutskever et al. 2013's form)
  SGD               w -= lr * g,  g on a minibatch of 64        (Robbins & Monro 1951)
  Adagrad           a += g^2; w -= lr * g / sqrt(a + eps)       (Duchi et al. 2011)
  RMSprop           v = rho*v + (1-rho)*g^2; w -= lr*g/(sqrt(v)+eps)  (Hinton 2012)
  Adam              bias-corrected moments m, v; w -= lr*m_hat/(sqrt(v_hat)+eps)  (Kingma & Ba 2015)

The minibatch rules (SGD onwards) all see the same minibatch sequence; with a
constant learning rate they stop at a noise floor set by the rate. Each
optimizer is a `fusedopt` NumPy optimizer updating `w` in place. The table
shows the excess loss f(w) - f(w*) (w* from `numpy.linalg.lstsq`) after a
number of steps, and the time of one `opt.step` call.

Run: python examples/update_rules.py [--quick] [--steps N]
"""

from __future__ import annotations

import argparse
import time
from typing import Any, Callable

import numpy as np

import fusedopt


def make_problem(seed: int = 0, n: int = 2000, d: int = 50) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    scales = np.geomspace(1.0, 10.0, d)  # condition number of X^T X about 100
    x = rng.standard_normal((n, d)) * scales
    w_true = rng.standard_normal(d)
    y = x @ w_true + 0.5 * rng.standard_normal(n)
    return x, y


def loss(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> float:
    r = x @ w - y
    return 0.5 * float(r @ r) / len(y)


def rules(lipschitz: float) -> list[tuple[str, bool, Callable[[list], Any], str]]:
    """(name, full batch?, optimizer factory, learning rate shown) for each rule."""
    lr_gd = 1.0 / lipschitz
    return [
        ("gradient descent", True, lambda p: fusedopt.SGD(p, learning_rate=lr_gd), f"{lr_gd:.2g}"),
        ("momentum 0.9", True, lambda p: fusedopt.SGD(p, learning_rate=lr_gd, momentum=0.9), f"{lr_gd:.2g}"),
        ("Nesterov 0.9", True,
         lambda p: fusedopt.SGD(p, learning_rate=lr_gd, momentum=0.9, nesterov=True), f"{lr_gd:.2g}"),
        ("SGD", False, lambda p: fusedopt.SGD(p, learning_rate=0.5 * lr_gd), f"{0.5 * lr_gd:.2g}"),
        ("Adagrad", False, lambda p: fusedopt.Adagrad(p, learning_rate=0.5), "0.5"),
        ("RMSprop", False, lambda p: fusedopt.RMSprop(p, learning_rate=0.01), "0.01"),
        ("Adam", False, lambda p: fusedopt.Adam(p, learning_rate=0.05), "0.05"),
    ]


def run(steps: int = 500, batch_size: int = 64, seed: int = 0) -> dict[str, dict[str, Any]]:
    x, y = make_problem(seed)
    n, d = x.shape
    w_star = np.linalg.lstsq(x, y, rcond=None)[0]
    best = loss(x, y, w_star)
    lipschitz = float(np.linalg.eigvalsh(x.T @ x / n).max())
    checkpoints = sorted({c for c in (10, 100, steps) if c <= steps})
    batches = np.random.default_rng(seed + 1).integers(0, n, size=(steps, batch_size))
    results: dict[str, dict[str, Any]] = {}
    for name, full_batch, make, lr in rules(lipschitz):
        w = np.zeros(d)
        opt = make([w])
        excess = {0: loss(x, y, w) - best}
        step_times = []
        for t in range(steps):
            xb, yb = (x, y) if full_batch else (x[batches[t]], y[batches[t]])
            grad = xb.T @ (xb @ w - yb) / len(yb)
            start = time.perf_counter()
            opt.step([grad])
            step_times.append(time.perf_counter() - start)
            if t + 1 in checkpoints:
                excess[t + 1] = max(loss(x, y, w) - best, 0.0)  # rounding can go below 0
        results[name] = {"batch": "full" if full_batch else str(batch_size), "lr": lr, "excess": excess,
                         "step_us": 1e6 * float(np.median(step_times))}
    return results


def print_table(results: dict[str, dict[str, Any]]) -> None:
    steps = sorted(next(iter(results.values()))["excess"])
    head = f"| {'rule':<16} | {'batch':>5} | {'lr':>7} | " + " | ".join(
        f"{'step ' + str(s):>10}" for s in steps) + f" | {'us/step':>7} |"
    print(head)
    print("|" + "|".join("-" * (len(c) + 0) for c in head.split("|")[1:-1]) + "|")
    for name, r in results.items():
        cells = " | ".join(f"{r['excess'][s]:>10.3g}" for s in steps)
        print(f"| {name:<16} | {r['batch']:>5} | {r['lr']:>7} | {cells} | {r['step_us']:>7.1f} |")


def main(argv: list[str] | None = None) -> dict[str, dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few steps (for tests)")
    parser.add_argument("--steps", type=int, default=None)
    args = parser.parse_args(argv)
    steps = args.steps or (100 if args.quick else 1000)
    start = time.perf_counter()
    results = run(steps=steps)
    print(f"least squares, 2000 x 50, condition number ~100; excess loss f(w) - f(w*) after each step "
          f"count (fusedopt {fusedopt.__version__}, ISA {fusedopt.build_info()['isa']})")
    print_table(results)
    print(f"elapsed {time.perf_counter() - start:.1f} s")
    return results


if __name__ == "__main__":
    main()
