"""Dropout on 16M float32 elements, side by side in one run, with the baselines
measured in the same run: fusedopt's forward and forward+backward (NumPy
API, and the ``fusedopt.keras.layers.Dropout`` op in ``tf.function``),
``keras.random.dropout`` and ``tf.nn.dropout`` in ``tf.function``, and two
memory-bound floors (NumPy ``x * 2``, and the engine's ``stream_roofline``
``y += x``). Also: the memory each keeps for backward, and fusedopt.Adam on
16M parameters in 4 tensors with and without fused ``l2``.

Every implementation is called in turn, round after round (so that a busy
machine slows them alike), after warm-up calls; the table gives the median
and the spread (min, max, IQR) in ms, GB/s for the bytes each must move, and
ratios to ``keras.random.dropout`` and to the floors.

Run: python benchmarks/bench_dropout.py [--elements N] [--rate R] [--repeats K] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from typing import Callable

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import fusedopt  # noqa: E402
from fusedopt import _core  # noqa: E402
from fusedopt.keras import layers as fk_layers  # noqa: E402
from fusedopt.bench.timing import Timing  # noqa: E402

SEED = 1234


def dropout_cases(n: int, rate: float) -> dict[str, tuple[Callable[[], object], float, str]]:
    """name -> (one call, bytes it must move, bytes kept for backward per element)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal(n).astype(np.float32)
    dy = rng.standard_normal(n).astype(np.float32)
    out = np.empty_like(x)
    xt, dyt = tf.constant(x), tf.constant(dy)
    f32, mask = 4 * n, n / 8

    def fused_fwd_bwd_mask():
        _, m = fusedopt.ops.dropout(x, rate, SEED)
        return fusedopt.ops.dropout_backward(dy, m, rate)

    def fused_fwd_bwd_seed():
        fusedopt.ops.dropout(x, rate, SEED)
        return fusedopt.ops.dropout_backward(dy, None, rate, seed=SEED)

    keras_fwd = tf.function(lambda a: keras.random.dropout(a, rate, seed=SEED))
    tf_fwd = tf.function(lambda a: tf.nn.dropout(a, rate, seed=SEED))

    @tf.function
    def keras_fwd_bwd(a, g):
        with tf.GradientTape() as tape:
            tape.watch(a)
            y = keras.random.dropout(a, rate, seed=SEED)
        return y, tape.gradient(y, a, output_gradients=g)

    layer = fk_layers.Dropout(rate, seed=SEED)
    layer_fwd = tf.function(lambda a: layer(a, training=True))

    @tf.function
    def layer_fwd_bwd(a, g):
        with tf.GradientTape() as tape:
            tape.watch(a)
            y = layer(a, training=True)
        return y, tape.gradient(y, a, output_gradients=g)

    return {
        "fusedopt dropout fwd": (lambda: fusedopt.ops.dropout(x, rate, SEED), 2 * f32 + mask, "1 bit"),
        "fusedopt fwd+bwd (mask)": (fused_fwd_bwd_mask, 4 * f32 + 2 * mask, "1 bit"),
        "fusedopt fwd+bwd (seed)": (fused_fwd_bwd_seed, 4 * f32 + mask, "0 (seed)"),
        "fusedopt.keras Dropout fwd (tf.function)": (lambda: layer_fwd(xt), 2 * f32 + mask, "1 bit"),
        "fusedopt.keras Dropout fwd+bwd (tf.function)": (lambda: layer_fwd_bwd(xt, dyt),
                                                         4 * f32 + 2 * mask, "1 bit"),
        "keras.random.dropout fwd (tf.function)": (lambda: keras_fwd(xt), 2 * f32, "1 byte"),
        "keras.random.dropout fwd+bwd (tf.function)": (lambda: keras_fwd_bwd(xt, dyt), 4 * f32, "1 byte"),
        "tf.nn.dropout fwd (tf.function)": (lambda: tf_fwd(xt), 2 * f32, "1 byte"),
        "floor: numpy x*2": (lambda: x * np.float32(2), 2 * f32, ""),
        "floor: stream_roofline y += x": (lambda: _core.stream_roofline([[out]], [x]), 3 * f32, ""),
    }


def adam_cases(n: int, tensors: int = 4) -> dict[str, tuple[Callable[[], object], float, str]]:
    rng = np.random.default_rng(1)
    shape = (n // tensors,)
    grads = [rng.standard_normal(shape).astype(np.float32) for _ in range(tensors)]

    def make(**kw):
        opt = fusedopt.Adam([rng.standard_normal(shape).astype(np.float32) for _ in range(tensors)],
                            learning_rate=1e-3, **kw)
        return lambda: opt.step(grads)

    adam_bytes = 28.0 * n  # read p, g, m, v; write p, m, v
    return {
        "fusedopt.Adam": (make(), adam_bytes, ""),
        "fusedopt.Adam + l2": (make(l2=1e-4), adam_bytes, ""),
        "fusedopt.Adam + l1, l2, proximal_l1": (make(l1=1e-5, l2=1e-4, proximal_l1=1e-4), adam_bytes, ""),
    }


def run_interleaved(cases: dict, warmup: int, repeats: int) -> dict[str, Timing]:
    """Warm every case up, then time one call of each case per round."""
    first = {}
    for name, (call, _, _) in cases.items():
        t0 = time.perf_counter()
        call()
        first[name] = time.perf_counter() - t0
        for _ in range(warmup - 1):
            call()
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(repeats):
        for name, (call, _, _) in cases.items():
            t0 = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - t0)
    return {name: Timing(tuple(times[name]), first[name]) for name in cases}


def ratio(a: Timing, b: Timing) -> dict[str, float]:
    """Median ratio, and its range from the per-round extremes (min/max, max/min)."""
    return {"median": a.median_s / b.median_s, "low": a.min_s / b.max_s, "high": a.max_s / b.min_s}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--elements", type=int, default=16 * 2**20)
    parser.add_argument("--rate", type=float, default=0.5)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args(argv)
    n = args.elements

    cases = {**dropout_cases(n, args.rate), **adam_cases(n)}
    timings = run_interleaved(cases, args.warmup, args.repeats)

    keras_fwd = timings["keras.random.dropout fwd (tf.function)"]
    keras_both = timings["keras.random.dropout fwd+bwd (tf.function)"]
    floor_np = timings["floor: numpy x*2"]
    floor_stream = timings["floor: stream_roofline y += x"]
    ratios = {
        "fwd / keras fwd": ratio(timings["fusedopt dropout fwd"], keras_fwd),
        "fwd+bwd (mask) / keras fwd+bwd": ratio(timings["fusedopt fwd+bwd (mask)"], keras_both),
        "fwd+bwd (seed) / keras fwd+bwd": ratio(timings["fusedopt fwd+bwd (seed)"], keras_both),
        "keras Dropout fwd / keras fwd": ratio(timings["fusedopt.keras Dropout fwd (tf.function)"], keras_fwd),
        "keras Dropout fwd+bwd / keras fwd+bwd": ratio(
            timings["fusedopt.keras Dropout fwd+bwd (tf.function)"], keras_both),
        "fwd / numpy x*2": ratio(timings["fusedopt dropout fwd"], floor_np),
        "fwd / stream_roofline": ratio(timings["fusedopt dropout fwd"], floor_stream),
        "keras fwd / numpy x*2": ratio(keras_fwd, floor_np),
        "Adam + l2 / Adam": ratio(timings["fusedopt.Adam + l2"], timings["fusedopt.Adam"]),
        "Adam + l1, l2, prox / Adam": ratio(timings["fusedopt.Adam + l1, l2, proximal_l1"],
                                            timings["fusedopt.Adam"]),
    }

    info = fusedopt.build_info()
    print(f"dropout benchmark: {n} float32 elements, rate {args.rate}, {args.repeats} rounds after "
          f"{args.warmup} warm-up calls; fusedopt {info['isa']} x {info['num_threads']} threads, "
          f"TF {tf.__version__}, Keras {keras.__version__}, {os.cpu_count()} CPUs")
    print(f"{'case':<44}{'median ms':>10}{'min':>8}{'max':>8}{'IQR':>7}{'GB/s':>7}  kept for bwd/elem")
    for name, (_, nbytes, kept) in cases.items():
        t = timings[name]
        print(f"{name:<44}{t.median_s * 1e3:>10.2f}{t.min_s * 1e3:>8.2f}{t.max_s * 1e3:>8.2f}"
              f"{t.iqr_s * 1e3:>7.2f}{nbytes / t.median_s / 1e9:>7.1f}  {kept}")
    print(f"\n{'ratio (time)':<44}{'median':>10}{'range':>18}")
    for name, r in ratios.items():
        print(f"{name:<44}{r['median']:>10.3f}{r['low']:>9.3f}-{r['high']:.3f}")

    if args.json:
        result = {
            "elements": n, "rate": args.rate, "repeats": args.repeats, "warmup": args.warmup,
            "build_info": info, "tensorflow": tf.__version__, "keras": keras.__version__,
            "cases": {name: {"bytes": cases[name][1], "kept_for_backward_per_element": cases[name][2],
                             "median_s": t.median_s, **t.spread(), "first_call_s": t.first_call_s,
                             "times_s": list(t.times)} for name, t in timings.items()},
            "ratios": ratios,
        }
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
