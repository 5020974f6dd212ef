"""Soak run of the NumPy door (issue 12): many mixed fused calls from several
Python threads at once, each thread also changing the engine's thread count.

    python tests/soak.py --steps 100000 [--json result.json]

Each Python thread owns a few jobs (optimizers of several rules, dtypes and
sizes, from one tensor of 300k elements to 200 tiny ones, plus dropout and
regularizer calls) and steps a random one of them per step; now and then it
calls fusedopt.set_num_threads(k), k in 1..--max-threads, while the other
threads step. The run fails (exit status 1, the reason printed) when:

- a thread raises, or no step completes for --stall-timeout seconds (a
  deadlock: every thread's Python stack is dumped, exit status 3);
- a parameter or slot is not finite at the end;
- one optimizer per Python thread, replayed afterwards on one engine thread
  with the same gradients, differs in any bit (the engine promises bitwise
  identical results for every thread count), or a dropout output or
  regularizer penalty differs from its single-threaded value;
- resident memory grew by --max-rss-growth-mb or more from the end of the
  warm-up (the first --warmup steps, which reach every job and every thread
  count) to the end, both measured with every thread paused
  (--no-rss-check: not measured; for sanitizer builds, whose quarantine
  grows memory by design).

The last line is a one-line summary; --json writes the figures.
"""

from __future__ import annotations

import argparse
import faulthandler
import gc
import json
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

import fusedopt
import fusedopt.ops as F
import fusedopt.regularizers as R

NUM_GRADS = 8  # each optimizer cycles through this many gradient lists
NUM_JOBS = 14  # make_jobs's


def rss_bytes() -> int:
    """Resident set size now (Linux: /proc/self/statm)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@dataclass
class OptimizerJob:
    """An optimizer over fixed parameters, stepped with gradients[k % NUM_GRADS]."""

    name: str
    make: Callable[[list], fusedopt.Optimizer]
    shapes: list
    dtype: type
    seed: int
    opt: fusedopt.Optimizer = field(init=False)
    start: list = field(init=False)
    grads: list = field(init=False)

    def __post_init__(self):
        rng = np.random.default_rng(self.seed)
        self.start = [(0.5 * rng.standard_normal(s)).astype(self.dtype) for s in self.shapes]
        self.grads = [[(0.1 * rng.standard_normal(s)).astype(self.dtype) for s in self.shapes]
                      for _ in range(NUM_GRADS)]
        self.opt = self.fresh()

    def fresh(self) -> fusedopt.Optimizer:
        return self.make([p.copy() for p in self.start])

    def step(self) -> None:
        self.opt.step(self.grads[self.opt.iterations % NUM_GRADS])

    @property
    def calls(self) -> int:
        return self.opt.iterations

    def arrays(self, opt=None):
        """(label, array) for every parameter and slot."""
        opt = opt or self.opt
        for i, p in enumerate(opt.params):
            yield f"params[{i}]", p
        for slot, values in opt.slots.items():
            for i, v in enumerate(values):
                if v is not None:
                    yield f"slots[{slot!r}][{i}]", v

    def check(self) -> list[str]:
        return [f"{self.name}: {label} is not finite" for label, a in self.arrays()
                if not np.all(np.isfinite(a))]

    def replay_mismatches(self) -> list[str]:
        """Replays this job's steps on one engine thread; the labels that differ."""
        ref = self.fresh()
        for k in range(self.opt.iterations):
            ref.step(self.grads[k % NUM_GRADS])
        return [f"{self.name}: {label} after {self.opt.iterations} steps"
                for (label, a), (_, b) in zip(self.arrays(), self.arrays(ref))
                if a.tobytes() != b.tobytes()]


@dataclass
class StatelessJob:
    """A call whose result must equal, bit for bit, its single-threaded value."""

    name: str
    call: Callable[[], bytes]
    calls: int = 0
    mismatches: int = 0
    expected: bytes = field(init=False)

    def __post_init__(self):
        self.expected = self.call()

    def step(self) -> None:
        self.calls += 1
        if self.call() != self.expected:
            self.mismatches += 1

    def check(self) -> list[str]:
        return [f"{self.name}: {self.mismatches} of {self.calls} calls differ from the "
                "single-threaded result"] if self.mismatches else []


def make_jobs(num_workers: int) -> list[list]:
    """The jobs of each Python thread; the first of each is replayed at the end."""
    f32, f64 = np.float32, np.float64
    rng = np.random.default_rng(12)
    x = (rng.random((3, 70_001)) + 0.5).astype(f32)
    ws = [rng.standard_normal(s).astype(f32) for s in [(300_001,), (17, 241), (5,)]]

    def dropout_bytes() -> bytes:
        y, mask = F.dropout(x, 0.3, seed=(7, 11), noise_shape=(3, 1))
        y2, mask2 = F.dropout(x, 0.6, seed=5)
        dx = F.dropout_backward(x, mask2, 0.6)
        return y.tobytes() + mask.tobytes() + y2.tobytes() + dx.tobytes()

    def penalty_bytes() -> bytes:
        return np.array([R.l1l2_penalty(ws, 0.01, 0.02),
                         R.l2sp_penalty(ws, [ws[0] * 0.5, None, None], 0.1, 0.2)]).tobytes()

    jobs = [
        OptimizerJob("adam-300k", lambda p: fusedopt.Adam(p, learning_rate=1e-3, weight_decay=0.01),
                     [(300_001,), (7,)], f32, 1),
        OptimizerJob("lamb", lambda p: fusedopt.Lamb(p, learning_rate=1e-3, weight_decay=0.01),
                     [(70_001,), (33, 31), (1,)], f32, 2),
        OptimizerJob("adafactor", lambda p: fusedopt.Adafactor(p, learning_rate=0.01),
                     [(300, 301), (4097,), (4, 8, 32)], f32, 3),
        OptimizerJob("lion-f64", lambda p: fusedopt.Lion(p, learning_rate=1e-4, weight_decay=0.1),
                     [(70_001,), (3,)], f64, 4),
        OptimizerJob("sgd-nesterov-l2",
                     lambda p: fusedopt.SGD(p, learning_rate=0.01, momentum=0.9, nesterov=True, l2=1e-3),
                     [(1031,), (5, 7)], f32, 5),
        OptimizerJob("rmsprop-centered-momentum",
                     lambda p: fusedopt.RMSprop(p, learning_rate=1e-3, centered=True, momentum=0.5),
                     [(150_001,)], f32, 6),
        OptimizerJob("ftrl", lambda p: fusedopt.Ftrl(p, learning_rate=0.05, l1_regularization_strength=1e-3),
                     [(4097,)], f32, 7),
        OptimizerJob("nadam-200-tiny", lambda p: fusedopt.Nadam(p, learning_rate=1e-3),
                     [(17,)] * 150 + [(3, 5)] * 50, f32, 8),
        OptimizerJob("schedule-free-adamw",
                     lambda p: fusedopt.ScheduleFreeAdamW(p, learning_rate=1e-3, warmup_steps=10),
                     [(70_001,)], f32, 9),
        OptimizerJob("muon", lambda p: fusedopt.Muon(p, learning_rate=0.01), [(64, 128), (64,)], f32, 10),
        OptimizerJob("adagrad-proximal-f64",
                     lambda p: fusedopt.Adagrad(p, learning_rate=0.01, l1=1e-4, proximal_l1=1e-4),
                     [(40_000,)], f64, 11),
        OptimizerJob("adamw-amsgrad-clipnorm",
                     lambda p: fusedopt.AdamW(p, learning_rate=1e-3, amsgrad=True, global_clipnorm=1.0),
                     [(33_000,), (8, 8)], f32, 12),
        StatelessJob("dropout", dropout_bytes),
        StatelessJob("penalties", penalty_bytes),
    ]
    assert len(jobs) == NUM_JOBS
    # Dealt round robin: each thread's first job is an optimizer (replayed).
    per_worker = [[] for _ in range(num_workers)]
    for i, job in enumerate(jobs):
        per_worker[i % num_workers].append(job)
    return per_worker


class Gate:
    """Every worker arrives and waits; the main thread sees them all there, then opens it."""

    def __init__(self, n: int) -> None:
        self._n, self._arrived, self._open = n, set(), False
        self._cv = threading.Condition()

    def arrive_and_wait(self) -> None:
        with self._cv:
            self._arrived.add(threading.get_ident())
            self._cv.notify_all()
            self._cv.wait_for(lambda: self._open)

    def reached(self) -> bool:
        """Whether the calling thread has arrived here."""
        with self._cv:
            return threading.get_ident() in self._arrived

    def wait_all(self, timeout: float) -> bool:
        with self._cv:
            return self._cv.wait_for(lambda: len(self._arrived) == self._n, timeout)

    def release(self) -> None:
        with self._cv:
            self._open = True
            self._cv.notify_all()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=100_000, help="steps in all (default 100000)")
    parser.add_argument("--warmup", type=int, default=None,
                        help="steps before the first memory reading (default: a tenth, at least 1000)")
    parser.add_argument("--python-threads", type=int, default=4)
    parser.add_argument("--max-threads", type=int, default=4, help="engine threads range over 1..this")
    parser.add_argument("--switch-every", type=int, default=25,
                        help="a thread calls set_num_threads about once in this many steps")
    parser.add_argument("--max-rss-growth-mb", type=float, default=1.0)
    parser.add_argument("--no-rss-check", action="store_true")
    parser.add_argument("--stall-timeout", type=float, default=60.0,
                        help="seconds without a completed step that count as a deadlock")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="write the figures to this file")
    parser.add_argument("--simulate-hang", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.max_threads < 1 or args.steps < 1:
        parser.error("--steps and --max-threads must be >= 1")
    if not 1 <= args.python_threads <= NUM_JOBS:
        parser.error(f"--python-threads must be in 1..{NUM_JOBS}")
    warmup = args.warmup if args.warmup is not None else max(args.steps // 10, 1000)
    warmup = min(warmup, args.steps)

    fusedopt.set_num_threads(1)
    jobs = make_jobs(args.python_threads)  # stateless references: one engine thread
    workers_n = args.python_threads
    share = [args.steps // workers_n + (i < args.steps % workers_n) for i in range(workers_n)]
    warm_share = [warmup // workers_n + (i < warmup % workers_n) for i in range(workers_n)]
    progress = [0] * workers_n
    errors: list[str] = []
    seen_threads: set[int] = set()
    warm_gate, end_gate = Gate(workers_n), Gate(workers_n)
    hang = threading.Event()

    def worker(w: int) -> None:
        rng = np.random.default_rng([args.seed, w])
        mine = jobs[w]
        try:
            for k in range(share[w]):
                if k == warm_share[w]:
                    warm_gate.arrive_and_wait()  # the main thread reads memory meanwhile
                    if args.simulate_hang and w == 0:
                        hang.wait()
                if k < len(mine):  # the warm-up reaches every job and every thread count
                    job = mine[k]
                    n = 1 + (w + k) % args.max_threads
                else:
                    job = mine[int(rng.integers(len(mine)))]
                    n = int(rng.integers(1, args.max_threads + 1)) if rng.random() < 1 / args.switch_every else 0
                if n:
                    fusedopt.set_num_threads(n)
                    got = fusedopt.get_num_threads()
                    if not 1 <= got <= args.max_threads:
                        raise AssertionError(f"get_num_threads() = {got} after set_num_threads({n})")
                    seen_threads.add(n)
                job.step()
                progress[w] = k + 1
        except BaseException as err:  # noqa: BLE001 (reported by the main thread)
            errors.append(f"thread {w}: {type(err).__name__}: {err}")
        finally:
            if not warm_gate.reached():
                warm_gate.arrive_and_wait()
            end_gate.arrive_and_wait()  # the main thread reads memory meanwhile

    rss_samples: list[tuple[int, int]] = []  # (steps done, RSS) while running, for the record

    def wait_for(gate: Gate, phase: str) -> None:
        """Waits until every thread is at `gate`; exits (status 3) on a stall."""
        last, last_change = -1, time.monotonic()
        while not gate.wait_all(timeout=0.5):
            total = sum(progress)
            now = time.monotonic()
            if not args.no_rss_check and phase == "main phase":
                rss_samples.append((total, rss_bytes()))
            if total != last:
                last, last_change = total, now
            elif now - last_change > args.stall_timeout:
                print(f"soak: DEADLOCK? no step completed for {args.stall_timeout:.0f} s ({phase}; "
                      f"{total} of {args.steps} steps done, per thread {progress}); stacks:",
                      file=sys.stderr, flush=True)
                faulthandler.dump_traceback(all_threads=True)
                os._exit(3)

    # A backstop for a stall that keeps this thread from running at all.
    faulthandler.dump_traceback_later(args.stall_timeout * 2 + 60, exit=True)
    threads = [threading.Thread(target=worker, args=(w,), daemon=True) for w in range(workers_n)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    wait_for(warm_gate, "warm-up")
    gc.collect()
    rss_warm = None if args.no_rss_check else rss_bytes()
    t_warm = time.perf_counter()
    warm_gate.release()
    wait_for(end_gate, "main phase")
    gc.collect()
    rss_end = None if args.no_rss_check else rss_bytes()
    wall = time.perf_counter() - t0
    main_wall = time.perf_counter() - t_warm
    end_gate.release()
    for t in threads:
        t.join(timeout=args.stall_timeout)
    faulthandler.cancel_dump_traceback_later()
    if errors:
        print("soak: FAILED: " + "; ".join(errors), file=sys.stderr)
        return 1

    # -- checks (single engine thread) -----------------------------------------
    fusedopt.set_num_threads(1)
    problems: list[str] = []
    all_jobs = [j for js in jobs for j in js]
    for job in all_jobs:
        problems += job.check()
    replayed = [js[0].name for js in jobs if isinstance(js[0], OptimizerJob)]
    for js in jobs:
        if isinstance(js[0], OptimizerJob):
            problems += js[0].replay_mismatches()
    steps_done = sum(progress)
    if steps_done != args.steps:
        problems.append(f"{steps_done} steps done, {args.steps} asked")
    if sum(j.calls for j in all_jobs) != args.steps:
        problems.append(f"the jobs count {sum(j.calls for j in all_jobs)} calls, {args.steps} asked")
    if seen_threads != set(range(1, args.max_threads + 1)):
        problems.append(f"engine thread counts used: {sorted(seen_threads)}")
    growth = None
    if not args.no_rss_check:
        growth = rss_end - rss_warm
        if growth >= args.max_rss_growth_mb * 2**20:
            problems.append(f"resident memory grew by {growth / 2**20:.2f} MB after the warm-up "
                            f"(limit {args.max_rss_growth_mb} MB)")

    result = {
        "steps": steps_done,
        "warmup_steps": warmup,
        "python_threads": workers_n,
        "engine_threads": sorted(seen_threads),
        "wall_s": round(wall, 2),
        "main_phase_s": round(main_wall, 2),
        "rss_after_warmup_bytes": rss_warm,
        "rss_end_bytes": rss_end,
        "rss_growth_bytes": growth,
        "rss_samples_while_running": rss_samples,
        "calls_per_job": {j.name: j.calls for j in all_jobs},
        "replayed": replayed,
        "problems": problems,
        "ok": not problems,
    }
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    for p in problems:
        print(f"soak: {p}", file=sys.stderr)
    memory = ("memory not checked" if growth is None else
              f"RSS {rss_warm / 2**20:.1f} MB after warm-up, {growth / 2**20:+.3f} MB at the end")
    print(f"soak: {steps_done} steps in {wall:.1f} s ({workers_n} Python threads, engine threads "
          f"1..{args.max_threads}), {memory}, {len(problems)} problems: {'OK' if not problems else 'FAILED'}")
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
