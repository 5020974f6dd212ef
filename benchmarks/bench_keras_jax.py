"""fusedopt.keras against keras.optimizers on Keras's JAX backend, in one run.

Each case times one optimizer step, ``optimizer.stateless_apply`` under
``jax.jit`` with the params and optimizer variables donated, as Keras's JAX
trainer runs it (so that fusedopt's custom call updates in place), for the built-in (``keras-jax``)
and the drop-in (``fusedopt-keras-jax``). The two are timed interleaved,
sample by sample, so that both see the same machine; the report gives the
median, the interquartile range, and the ratio of the medians.

Layouts: large, 16M float32 params in 4 tensors; small, 1M in 1000 tensors.

Run: KERAS_BACKEND=jax python benchmarks/bench_keras_jax.py [--rules adam,sgd]
     [--layouts large,small] [--samples 30] [--threads 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "jax")

LAYOUTS = {"large": (4, 4 * 1024 * 1024), "small": (1000, 1000),
           # for finding where the custom call starts to pay
           "16x1M": (16, 1024 * 1024), "64x64K": (64, 64 * 1024), "256x16K": (256, 16 * 1024),
           "1000x4K": (1000, 4 * 1024)}
# The benchmark's rules (fusedopt.bench.rules: Keras class and arguments) that
# Keras ships, Muon aside (its matrices take Keras's update by design).
DEFAULT_RULES = ("sgd", "sgd_momentum", "rmsprop", "adagrad", "adadelta", "adam", "adamw", "adamax",
                 "nadam", "ftrl", "lion", "lamb", "adafactor")


def _step(module, name: str, kwargs: dict, shapes: list, seed: int):
    """A no-argument callable running one jitted, donated step of `module.name`."""
    import jax
    import jax.numpy as jnp
    import keras
    import numpy as np

    rng = np.random.default_rng(seed)
    variables = [keras.Variable(rng.normal(size=s).astype("float32"), name=f"w{i}") for i, s in enumerate(shapes)]
    optimizer = getattr(module, name)(learning_rate=1e-3, **kwargs)
    optimizer.build(variables)
    grads = [jnp.asarray(rng.normal(size=s).astype("float32")) for s in shapes]
    def update(params, opt, grads):
        # Params first, as in Keras's train step state: JAX pairs each donated
        # input with the first output of its shape and dtype, so this order
        # lets every buffer be updated in place (no copies).
        new_opt_values = optimizer.stateless_apply(opt, grads, params)
        return new_opt_values[0], new_opt_values[1]

    apply = jax.jit(update, donate_argnums=(0, 1))
    state = {"opt": [v.value for v in optimizer.variables], "params": [v.value for v in variables]}

    def step():
        state["params"], state["opt"] = apply(state["params"], state["opt"], grads)
        jax.block_until_ready(state["params"])

    return step


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rules", default=",".join(DEFAULT_RULES))
    ap.add_argument("--layouts", default="large,small")
    ap.add_argument("--samples", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="fusedopt's thread count")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args(argv)

    import keras

    if keras.backend.backend() != "jax":
        print(f"bench_keras_jax: needs KERAS_BACKEND=jax, not {keras.backend.backend()!r}", file=sys.stderr)
        return 2
    import fusedopt
    import fusedopt.keras as fk
    from fusedopt.bench.rules import RULES
    from fusedopt.keras import _xla_library

    if args.threads:
        fusedopt.set_num_threads(args.threads)
    if not _xla_library.usable():
        print(f"bench_keras_jax: the XLA FFI handler is unavailable: {_xla_library.status()['error']}",
              file=sys.stderr)
        return 1
    results = []
    print(f"threads={fusedopt.get_num_threads()} samples={args.samples} (median ms, IQR ms)")
    print(f"{'rule':<14}{'layout':<8}{'keras-jax':>20}{'fusedopt-keras-jax':>22}{'speed-up':>10}")
    for layout in args.layouts.split(","):
        count, size = LAYOUTS[layout]
        shapes = [(size // 1024, 1024)] * count if size % (1024 * 1024) == 0 else [(size,)] * count
        for rule in args.rules.split(","):
            name, kwargs = RULES[rule].cls, RULES[rule].kwargs
            steps = {"keras-jax": _step(keras.optimizers, name, kwargs, shapes, 0),
                     "fusedopt-keras-jax": _step(fk, name, kwargs, shapes, 0)}
            for step in steps.values():
                for _ in range(args.warmup):
                    step()
            times: dict[str, list[float]] = {k: [] for k in steps}
            for _ in range(args.samples):
                for impl, step in steps.items():  # interleaved
                    start = time.perf_counter()
                    step()
                    times[impl].append(time.perf_counter() - start)
            summary = {}
            for impl, ts in times.items():
                q = statistics.quantiles(ts, n=4)
                summary[impl] = {"median_ms": 1e3 * statistics.median(ts), "iqr_ms": 1e3 * (q[2] - q[0]),
                                 "min_ms": 1e3 * min(ts)}
            ratio = summary["keras-jax"]["median_ms"] / summary["fusedopt-keras-jax"]["median_ms"]
            k, f = summary["keras-jax"], summary["fusedopt-keras-jax"]
            print(f"{rule:<14}{layout:<8}{k['median_ms']:>11.2f} ({k['iqr_ms']:5.2f}){f['median_ms']:>13.2f} "
                  f"({f['iqr_ms']:5.2f}){ratio:>9.2f}x", flush=True)
            results.append({"rule": rule, "layout": layout, "speedup": ratio, **{i: s for i, s in summary.items()}})
            del steps
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"threads": fusedopt.get_num_threads(), "results": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
