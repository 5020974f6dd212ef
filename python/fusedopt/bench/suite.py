"""Plan, run and post-process a benchmark suite.

`run(config)` returns the JSON document:

- ``machine``: what ran it; ``config``: what was asked for.
- ``records``: one per measured case. Each carries the case (``rule``,
  ``implementation``, ``size_case``, ``dtype``, ``threads``), the median step
  time and its spread, GB/s counted with the rule's minimal bytes, the
  fraction of the roofline measured in the same run, and speedups over the
  Keras built-in and the other baselines measured in the same run. A
  ``fusedopt-keras`` record (also of ``--fit``) has ``fused``: true, read from
  the traced step (its fused op updated every variable).
- ``skipped``: cases that did not run (the case fields, ``skip`` and
  ``reason``): a default skip, or an implementation that cannot run the case
  here (`impls.Unavailable`).
- ``errors``: cases that raised (the case fields and ``error``,
  "TypeName: message"), ``--fit``'s models too, including a
  ``fusedopt-keras`` case where fusedopt.keras fell back to Keras's own
  update (then also ``fused``: false). ``fusedopt bench`` exits 1 when there
  is any, unless ``--keep-going``.
- ``notes`` and ``elapsed_s``.
"""

from __future__ import annotations

import datetime
import gc
import math
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass
from importlib import metadata
from typing import Any, Sequence, TextIO

import numpy as np

import fusedopt
from fusedopt.bench import impls, report
from fusedopt.bench.fused_op import KerasFallback
from fusedopt.bench.rules import IMPLEMENTATIONS, KERAS_BASELINE, RULES, SIZES, THREAD_AWARE
from fusedopt.bench.timing import Timing, measure


@dataclass
class Config:
    """What to run. See `fusedopt bench --help` for the defaults and their reasons."""

    rules: list[str]
    sizes: list[str]
    dtypes: list[str]
    impls: list[str]
    threads: list[int]
    repeats: int | None = None
    warmup: int = 2
    budget_s: float = 0.1
    min_repeats: int = 3
    seed: int = 0
    skips: bool = True
    fit: bool = False
    quiet: bool = False


@dataclass(frozen=True)
class Case:
    """One planned measurement; `skip` holds the reason when it will not run."""

    rule: str
    size_case: str
    dtype: str
    implementation: str
    threads: int
    skip: str | None = None


#: torch.optim classes with a fused CPU implementation (torch 2.x).
TORCH_FUSED = ("SGD", "Adam", "AdamW", "Adagrad")


def default_skip(rule: str, size: str, impl: str, impls: Sequence[str] = IMPLEMENTATIONS,
                 threads: int = 1) -> str | None:
    """Why the default suite leaves a combination out (None: it runs).

    These keep `fusedopt bench` near 4 minutes on 2 cores; ``--no-skips``
    runs everything selected.
    """
    if impl.startswith("torch") and threads > 1 and (os.cpu_count() or 1) <= 2:
        return ("on <= 2 CPUs PyTorch's CPU optimizers are fastest at 1 thread, and its OpenMP "
                "pool stalls for seconds when the machine is shared")
    if rule == "muon" and size == "large":
        return "Newton-Schulz on 2048x2048 tensors costs ~1 TFLOP per step (seconds)"
    if rule == "dropout" and impl in ("keras-xla", "fusedopt-keras-xla"):
        return "XLA dropout on CPU takes seconds per call"
    if impl == "keras-eager" and rule not in ("adam", "dropout"):
        return "eager runs Keras's update_step like keras-function, ~3x slower: adam only"
    torch_rule = RULES[rule].torch
    if impl == "torch-foreach" and "torch-fused" in impls and torch_rule and torch_rule[0] in TORCH_FUSED:
        return "torch-fused is PyTorch's fastest CPU path for this rule"
    if size != "small":
        return None
    if rule == "dropout":
        return "dropout runs on large only"
    if impl == "numpy":
        return "the NumPy reference runs on large only"
    if impl == "keras-eager":
        return "~1 s per step with 1000 variables"
    if impl in ("keras-xla", "fusedopt-keras-xla"):
        return "~25 s XLA compile with 1000 variables"
    if impl == "tf-raw":
        return "tracing 1000 raw ops takes ~10 s"
    if impl in ("keras-function", "fusedopt-keras") and rule != "adam":
        return "tracing 1000 variables takes ~25 s per rule: adam only"
    return None


def plan(config: Config) -> list[Case]:
    """Every case the config selects, in run order, with default skips marked."""
    top = max(config.threads)
    cases = []
    for size in config.sizes:
        for dtype in config.dtypes:
            for rule in config.rules:
                for impl in ["roofline"] + [i for i in IMPLEMENTATIONS if i in config.impls and i != "roofline"]:
                    counts = config.threads if impl in THREAD_AWARE else [top]
                    cases += [Case(rule, size, dtype, impl, t,
                                   default_skip(rule, size, impl, config.impls, t) if config.skips else None)
                              for t in counts]
    return cases


def make_data(size: str, dtype: str, seed: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Parameters ~ N(0, 0.1^2) and gradients ~ N(0, 0.01^2), from a fixed seed."""
    case = SIZES[size]
    rng = np.random.default_rng(seed)
    dt = np.dtype(dtype)
    params = [rng.standard_normal(case.shape, dtype=dt) * dt.type(0.1) for _ in range(case.count)]
    grads = [rng.standard_normal(case.shape, dtype=dt) * dt.type(0.01) for _ in range(case.count)]
    return params, grads


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine() or "unknown"  # not platform.processor(): see _platform


def _platform() -> str:
    """The OS, release, machine and libc, as platform.platform() says them on Linux; not
    platform.platform() itself, whose processor field runs `uname -p` in a subprocess
    (`fusedopt info` must start no process)."""
    parts = [platform.system(), platform.release(), platform.machine()]
    libc, version = platform.libc_ver()
    if libc:
        parts += ["with", libc + version]
    return "-".join(part for part in parts if part)


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def machine_info() -> dict[str, Any]:
    """Build, CPU, library versions and date of this run."""
    return {
        "build_info": fusedopt.build_info(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "platform": _platform(),
        "python": platform.python_version(),
        "versions": {p: _version(p) for p in ("numpy", "tensorflow", "keras", "jax", "torch", "matplotlib")},
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


class Progress:
    """One status line on stderr: rewritten in place on a terminal, one line per case otherwise."""

    def __init__(self, total: int, quiet: bool = False, stream: TextIO | None = None) -> None:
        self.total, self.quiet, self.done = total, quiet, 0
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.start = time.perf_counter()

    def show(self, label: str, result: str = "", advance: bool = False) -> None:
        if advance:
            self.done += 1
        if self.quiet or (not self.tty and not advance):
            return
        text = f"[{self.done:>3}/{self.total} {time.perf_counter() - self.start:5.0f}s] {label} {result}"
        self.stream.write(f"\r\x1b[K{text}" if self.tty else text + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty and not self.quiet:
            self.stream.write("\r\x1b[K")
            self.stream.flush()


def _record(case: Case, timing: Timing) -> dict[str, Any]:
    size = SIZES[case.size_case]
    return {
        "rule": case.rule,
        "implementation": case.implementation,
        "size_case": case.size_case,
        "dtype": case.dtype,
        "threads": impls.thread_count(case.implementation, case.threads),
        "elements": size.elements,
        "tensors": size.count,
        "repeats": len(timing.times),
        "median_s": timing.median_s,
        "spread": timing.spread(),
        "first_call_s": timing.first_call_s,
    }


def error_entry(case: Case, err: Exception) -> dict[str, Any]:
    """A case that raised, for the document's ``errors``: its fields and "TypeName: message"."""
    entry: dict[str, Any] = {k: v for k, v in asdict(case).items() if k != "skip"}
    entry["error"] = f"{type(err).__name__}: {err}"
    if isinstance(err, KerasFallback):
        entry["fused"] = False
    return entry


def _measure_case(case: Case, params: list, grads: list, config: Config) -> tuple[Timing, dict[str, Any]]:
    """The case's timing, and the record fields saying what its step ran (`impls.what_ran`)."""
    impls.set_threads(case.threads)
    rule = RULES[case.rule]
    step = impls.make_step(case.implementation, rule, params, grads, case.dtype, config.seed)
    try:
        timing = measure(step, warmup=config.warmup, repeats=config.repeats, budget_s=config.budget_s,
                         min_repeats=config.min_repeats)
        return timing, impls.what_ran(case.implementation, rule, step, len(params))
    finally:
        del step
        gc.collect()
        gc.freeze()  # survivors (lazily imported modules) are not scanned again


class _Rooflines:
    """The roofline of one (rule, size, dtype) group, per thread count, sampled throughout the group.

    Each thread count is first measured like any case; then a short burst
    (one warm-up, `BURST` timed calls) runs before every other case, at the
    thread count closest to that case's, so the roofline's samples span the
    same minutes as the cases it is compared with (the machine is shared).
    """

    BURST = 3

    def __init__(self, data: tuple[list, list], config: Config) -> None:
        self.data, self.config = data, config
        self.steps: dict[int, Any] = {}
        self.times: dict[int, list[float]] = {}
        self.first: dict[int, float] = {}

    def measure(self, case: Case) -> Timing:
        impls.set_threads(case.threads)
        step = impls.make_step("roofline", RULES[case.rule], *self.data, case.dtype)
        c = self.config
        timing = measure(step, warmup=c.warmup, repeats=c.repeats, budget_s=c.budget_s, min_repeats=c.min_repeats)
        self.steps[case.threads], self.times[case.threads] = step, list(timing.times)
        self.first[case.threads] = timing.first_call_s
        return timing

    def burst(self, threads: int) -> None:
        if not self.steps:
            return
        nearest = min(self.steps, key=lambda t: (abs(t - threads), -t))
        impls.set_threads(nearest)
        self.times[nearest] += measure(self.steps[nearest], warmup=1, repeats=self.BURST).times

    def records(self, rule: str, size: str, dtype: str) -> list[dict[str, Any]]:
        """One record per thread count, over all samples; frees the arrays."""
        out = [_record(Case(rule, size, dtype, "roofline", t), Timing(tuple(self.times[t]), self.first[t]))
               for t in sorted(self.times)]
        self.steps.clear()
        return out


def _run_group(group: list[Case], data: tuple[list, list], config: Config, progress: Progress,
               records: list[dict[str, Any]], skipped: list[dict[str, Any]],
               errors: list[dict[str, Any]]) -> None:
    """Measure one (rule, size, dtype): rooflines first, then every implementation."""
    rooflines = _Rooflines(data, config)
    try:
        for case in group:
            label = report.case_label(asdict(case))
            progress.show(label, "...")
            try:
                if case.implementation == "roofline":
                    timing = rooflines.measure(case)
                else:
                    rooflines.burst(case.threads)
                    timing, what_ran = _measure_case(case, *data, config)
                    records.append({**_record(case, timing), **what_ran})
            except impls.Unavailable as err:
                skipped.append(dict(asdict(case), reason=str(err)))
                progress.show(label, f"skipped: {err}", advance=True)
                continue
            except Exception as err:  # noqa: BLE001 - one broken case must not end the run
                errors.append(error_entry(case, err))  # and `fusedopt bench` fails, see cli.bench
                progress.show(label, f"error: {errors[-1]['error']}", advance=True)
                continue
            progress.show(label, f"{timing.median_s * 1e3:.3g} ms (n={len(timing.times)})", advance=True)
    finally:
        first = group[0]
        records += rooflines.records(first.rule, first.size_case, first.dtype)


def run(config: Config, stream: TextIO | None = None) -> dict[str, Any]:
    """Run the suite; return the JSON document (see the module docstring)."""
    begin = time.perf_counter()
    threads_before = fusedopt.get_num_threads()
    notes = []
    for impl in config.impls:
        problem = impls.library_problem(impl)
        if problem:
            notes.append(f"{impl} skipped everywhere: {problem}")
    cases = plan(config)
    # Imports are done: freeze what they allocated, so the collections after
    # each case only scan the case's own objects (a full one costs ~0.5 s
    # with TensorFlow and PyTorch loaded).
    gc.collect()
    gc.freeze()
    runnable = [c for c in cases if c.skip is None and not impls.library_problem(c.implementation)]
    skipped = [dict(asdict(c), reason=c.skip) for c in cases if c.skip is not None]
    progress = Progress(len(runnable) + (2 if config.fit else 0), config.quiet, stream)
    records: list[dict[str, Any]] = []
    errors: list[dict[str, Any]] = []
    try:
        for size in config.sizes:
            for dtype in config.dtypes:
                data = None
                for rule in config.rules:
                    group = [c for c in runnable if (c.size_case, c.dtype, c.rule) == (size, dtype, rule)]
                    if group:
                        data = data or make_data(size, dtype, config.seed)
                        _run_group(group, data, config, progress, records, skipped, errors)
                        gc.collect()
                del data
        if config.fit:
            from fusedopt.bench.fit import run_fit

            fit_records, fit_errors, fit_notes = run_fit(config, progress)
            records += fit_records
            errors += fit_errors
            notes += fit_notes
    finally:
        progress.close()
        impls.set_threads(threads_before)
        gc.unfreeze()
    finish(records)
    return {
        "machine": machine_info(),
        "config": asdict(config),
        "records": records,
        "skipped": skipped,
        "errors": errors,
        "notes": notes,
        "elapsed_s": time.perf_counter() - begin,
    }


def _closest(candidates: dict[int, dict[str, Any]], threads: int) -> dict[str, Any] | None:
    if not candidates:
        return None
    best = min(candidates, key=lambda t: (abs(t - threads), -t))
    return candidates[best]


def finish(records: list[dict[str, Any]]) -> None:
    """Add GB/s, fraction of roofline and speedups to every record, in place.

    The roofline is the one measured for the same (rule, size, dtype) at the
    record's thread count (or the closest measured). Speedups divide the
    baseline's median by the record's; ``speedup_vs`` (fusedopt records) takes
    each baseline at its fastest thread count measured, a conservative ratio.
    """
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault((r["rule"], r["size_case"], r["dtype"]), []).append(r)
    for (rule_name, size, dtype), group in groups.items():
        rule = RULES.get(rule_name)
        itemsize = np.dtype(dtype).itemsize
        rooflines = {r["threads"]: r for r in group if r["implementation"] == "roofline"}
        for r in group:
            r.setdefault("gbps", None)
            r.setdefault("fraction_of_roofline", None)
            if rule is not None and size in SIZES:
                per_element = (rule.roofline_bytes_per_element(itemsize) if r["implementation"] == "roofline"
                               else rule.bytes_per_element(itemsize))
                r["bytes_per_element"] = per_element
                r["gbps"] = per_element * r["elements"] / r["median_s"] / 1e9
        for r in group:
            roof = _closest(rooflines, r["threads"])
            if roof is not None and r["gbps"] is not None:
                r["fraction_of_roofline"] = r["gbps"] / roof["gbps"]
                r["roofline_threads"] = roof["threads"]
            keras = [b for b in group if b["implementation"] == KERAS_BASELINE]
            r["speedup_vs_keras"] = keras[0]["median_s"] / r["median_s"] if keras else None
            if r["implementation"].startswith("fusedopt"):
                best: dict[str, float] = {}
                for b in group:
                    name = b["implementation"]
                    if not name.startswith("fusedopt") and name != "roofline":
                        best[name] = min(best.get(name, math.inf), b["median_s"])
                r["speedup_vs"] = {name: t / r["median_s"] for name, t in best.items()}


__all__ = ["Config", "Case", "default_skip", "plan", "run", "finish", "machine_info", "make_data",
           "Progress", "error_entry"]
