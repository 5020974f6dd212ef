"""A short demo of the NumPy API: least squares with several update rules.

Run: python benchmarks/demo.py
"""

from __future__ import annotations

import numpy as np

import fusedopt


def least_squares(seed: int = 0, n: int = 256, d: int = 32):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((n, d)).astype(np.float32)
    x_true = rng.standard_normal(d).astype(np.float32)
    b = a @ x_true + 0.01 * rng.standard_normal(n).astype(np.float32)
    return a, b


def main(steps: int = 200) -> None:
    a, b = least_squares()
    print(fusedopt.build_info())
    print(f"least squares, {a.shape[0]}x{a.shape[1]}, {steps} steps")
    print(f"{'optimizer':<20}{'loss at start':>15}{'loss at end':>15}")
    configs = {
        "SGD": lambda p: fusedopt.SGD(p, learning_rate=0.05),
        "SGD momentum": lambda p: fusedopt.SGD(p, learning_rate=0.05, momentum=0.9),
        "SGD nesterov": lambda p: fusedopt.SGD(p, learning_rate=0.05, momentum=0.9, nesterov=True),
        "Adagrad": lambda p: fusedopt.Adagrad(p, learning_rate=0.5),
        "RMSprop": lambda p: fusedopt.RMSprop(p, learning_rate=0.01),
        "Adam": lambda p: fusedopt.Adam(p, learning_rate=0.05),
        "Lion": lambda p: fusedopt.Lion(p, learning_rate=0.005),
    }
    for name, make in configs.items():
        x = np.zeros(a.shape[1], np.float32)
        opt = make([x])
        loss0 = float(np.mean((a @ x - b) ** 2))
        for _ in range(steps):
            grad = (2.0 / a.shape[0]) * (a.T @ (a @ x - b))
            opt.step([grad.astype(np.float32)])
        loss = float(np.mean((a @ x - b) ** 2))
        print(f"{name:<20}{loss0:>15.4f}{loss:>15.6f}")


if __name__ == "__main__":
    main()
