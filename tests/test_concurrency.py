"""Optimizers stepped from several Python threads at once (the GIL is released
inside the native call) give exactly the results of sequential runs."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import fusedopt
from registry import CASES, assert_states_same_bits, grad_sequence, make_arrays

# One case per engine path: elementwise, two-pass Lamb, per-tensor Adafactor,
# Muon's mix of calls and NumPy matrix products, Nadam's extra scalar.
CONCURRENT_IDS = ["adam-wd", "lamb-wd", "adafactor-wd", "muon", "nadam-wd", "ftrl-regularized-wd"]
CONCURRENT = [c for c in CASES if c.id in CONCURRENT_IDS]
STEPS = 5
# Above the parallel threshold, several chunks; small enough to stay quick.
SHAPES = {
    "elementwise": [(150_001,), (3, 7)],
    "adafactor": [(300, 301), (70_001,)],
    "muon": [(100, 201), (70_001,)],
}


def _fresh(case, seed):
    shapes = SHAPES[case.kind]
    params = make_arrays(shapes, np.float32, np.random.default_rng(seed))
    return case.make(params), grad_sequence(shapes, np.float32, seed + 1, STEPS)


@pytest.mark.parametrize("threads", [1, 2])
def test_concurrent_steps_equal_sequential_steps(threads):
    fusedopt.set_num_threads(threads)
    assert len(CONCURRENT) == len(CONCURRENT_IDS)
    sequential = []
    for k, case in enumerate(CONCURRENT):
        opt, grads = _fresh(case, 100 + k)
        for g in grads:
            opt.step(g)
        sequential.append(opt)

    runs = [_fresh(case, 100 + k) for k, case in enumerate(CONCURRENT)]
    barrier = threading.Barrier(len(runs))
    errors = []

    def worker(opt, grads):
        try:
            barrier.wait()
            for g in grads:
                opt.step(g)
        except BaseException as err:  # reported below, in the test's thread
            errors.append(err)

    workers = [threading.Thread(target=worker, args=run) for run in runs]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=120)
    assert not any(w.is_alive() for w in workers), "a worker hung"
    assert not errors, errors
    for (opt, _), ref, case in zip(runs, sequential, CONCURRENT):
        assert opt.iterations == STEPS
        assert_states_same_bits(opt, ref, f"{case.id}: concurrent vs sequential")
        assert opt.state_dict()["extra"] == ref.state_dict()["extra"]


def test_set_num_threads_while_other_threads_step():
    """Changing the pool size between calls from another thread is safe and
    does not change any result."""
    case = next(c for c in CASES if c.id == "lamb-wd")
    ref, grads = _fresh(case, 7)
    for g in grads:
        ref.step(g)
    opt, grads = _fresh(case, 7)
    stop = threading.Event()

    def flip():
        n = 1
        while not stop.is_set():
            fusedopt.set_num_threads(n)
            n = 3 - n

    flipper = threading.Thread(target=flip)
    flipper.start()
    try:
        for g in grads:
            opt.step(g)
    finally:
        stop.set()
        flipper.join(timeout=60)
    assert not flipper.is_alive()
    assert_states_same_bits(opt, ref, "steps while the thread count changed")
