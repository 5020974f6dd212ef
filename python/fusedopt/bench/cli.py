"""The `fusedopt` command line: `bench`, `info` and `build-ops`."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Sequence

import fusedopt
from fusedopt.bench.rules import DTYPES, IMPLEMENTATIONS, RULES, SIZES

DEFAULT_SIZES = ("large", "small")
DEFAULT_BUDGET_S, DEFAULT_WARMUP = 0.1, 2
QUICK_BUDGET_S, QUICK_WARMUP = 0.02, 1

BENCH_EPILOG = f"""\
defaults (the suite `fusedopt bench` runs with no arguments, about 4 minutes on 2 cores, with the first-use op library build):
  every rule ({len(RULES)}: {", ".join(RULES)}),
  sizes large (16M params in 4 tensors) and small (1M params in 1000 tensors),
  float32, threads 1 and fusedopt.get_num_threads(), every implementation available.
  Thread counts apply to roofline, fusedopt and torch-*; TensorFlow uses its own pool
  (all cores) and NumPy one thread, so those run once.
  Each case: up to {DEFAULT_WARMUP} warm-up calls (the first, with tracing, is reported as
  first_call_s; the second only when the first took less than the budget),
  then single-step timings until {DEFAULT_BUDGET_S} s have passed (at least 3, at most 200;
  a case stops after 2 s of timed steps even below 3); --repeats N times exactly N steps.
default skips (--no-skips runs them):
  muon on large (Newton-Schulz on 2048x2048 is ~1 TFLOP per step);
  torch-* above 1 thread on machines with <= 2 CPUs (fastest at 1 thread there; PyTorch's
  OpenMP pool stalls for seconds per step when the machine is shared);
  keras-eager for adam and dropout only (the same update_step as keras-function, ~3x slower);
  torch-foreach where torch-fused exists (fused is PyTorch's fastest CPU path);
  on small: keras-function and fusedopt-keras for adam only (tracing 1000 variables takes
  ~25 s per rule), keras-eager (~1 s/step), keras-xla and fusedopt-keras-xla (~25 s compile), tf-raw (~10 s trace),
  numpy, dropout; dropout under XLA (seconds per call on CPU).
extra cases, when this build has them: adam_l2 (fused L2 regularization, fusedopt's l2=)
  and dropout (fusedopt.ops.dropout vs keras.random.dropout); otherwise skipped with a note.
--fit adds model.fit step time of a 102-variable MLP, fusedopt.keras.Adam vs keras Adam.
exit status:
  1 when any case raised an error (listed in the report's Errors section and the JSON's "errors"),
  a fusedopt-keras case (or --fit) whose step fell back to Keras's own update included;
  --keep-going exits 0 all the same (the errors are still listed); 2 for bad arguments.
  A case an implementation cannot run here is a skip, not an error: a library missing, a rule
  absent, or fusedopt-keras muon (fusedopt.keras.Muon leaves 2-D variables to Keras's Muon by design).
output:
  a table per case (median, IQR, min-max, GB/s, fraction of roofline, speedup vs keras-function)
  and fusedopt's speedup over every baseline (each at its fastest thread count). GB/s counts
  the rule's minimal bytes (params, grads, slots read; params, slots written); the roofline is
  fusedopt._core.stream_roofline (outputs[k] += inputs) over the same bytes, sampled before
  every case of the same rule so that it spans the same minutes on a shared machine.
"""


def _choices(kind: str, valid: Sequence[str]):
    """An argparse type: comma-separated names from `valid` (or "all")."""
    def parse(text: str) -> list[str]:
        names = [n.strip() for n in text.split(",") if n.strip()]
        if names == ["all"]:
            return list(valid)
        bad = [n for n in names if n not in valid]
        if bad or not names:
            raise argparse.ArgumentTypeError(
                f"unknown {kind} {', '.join(map(repr, bad)) or '(empty)'}; valid choices: {', '.join(valid)}, all")
        return names
    return parse


def _threads(text: str) -> list[int]:
    try:
        counts = sorted({int(t) for t in text.split(",") if t.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"threads must be comma-separated integers >= 1, got {text!r}") from None
    if not counts or counts[0] < 1:
        raise argparse.ArgumentTypeError(f"threads must be comma-separated integers >= 1, got {text!r}")
    return counts


def _positive(kind: type):
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a positive {kind.__name__}, got {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"expected a positive {kind.__name__}, got {text!r}")
        return value
    return parse


def _non_negative_int(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fusedopt", description="fusedopt: benchmarks and build information.")
    sub = parser.add_subparsers(dest="command", metavar="{bench,info,build-ops}", required=True)

    bench = sub.add_parser(
        "bench", help="side-by-side optimizer microbenchmarks against a same-run memory roofline",
        description="Time every update rule in fusedopt and the libraries it replaces, side by side in "
                    "one run, against the same-bytes memory roofline measured in that run.",
        epilog=BENCH_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    bench.add_argument("--rules", type=_choices("rule", list(RULES)), default=list(RULES),
                       help="comma-separated rules (default: all)")
    bench.add_argument("--sizes", type=_choices("size", list(SIZES)), default=None,
                       help="comma-separated size cases: " + "; ".join(f"{k}: {v.description}" for k, v in SIZES.items())
                       + " (default: large,small)")
    bench.add_argument("--dtypes", type=_choices("dtype", list(DTYPES)), default=["float32"],
                       help="comma-separated dtypes (default: float32)")
    bench.add_argument("--impls", type=_choices("implementation", list(IMPLEMENTATIONS)),
                       default=list(IMPLEMENTATIONS),
                       help="comma-separated implementations (default: all; roofline is always measured)")
    bench.add_argument("--threads", type=_threads, default=None,
                       help="comma-separated thread counts (default: 1 and fusedopt.get_num_threads())")
    bench.add_argument("--repeats", type=_positive(int), default=None,
                       help="timed steps per case (default: adaptive, see --budget)")
    bench.add_argument("--warmup", type=_non_negative_int, default=None,
                       help=f"untimed warm-up steps per case (default: {DEFAULT_WARMUP}; --quick: {QUICK_WARMUP})")
    bench.add_argument("--budget", type=_positive(float), default=None,
                       help=f"seconds of timed steps per case (default: {DEFAULT_BUDGET_S}; --quick: {QUICK_BUDGET_S})")
    bench.add_argument("--seed", type=int, default=0, help="seed of the parameters and gradients (default: 0)")
    bench.add_argument("--quick", action="store_true",
                       help="the tiny size case, short budget, one warm-up step: for tests and smoke runs")
    bench.add_argument("--no-skips", dest="skips", action="store_false",
                       help="also run the combinations the default suite skips (see below)")
    bench.add_argument("--fit", action="store_true",
                       help="add end-to-end model.fit step time (fusedopt.keras.Adam vs keras Adam)")
    bench.add_argument("--json", metavar="PATH", help="write machine info and every record as JSON")
    bench.add_argument("--csv", metavar="PATH", help="write the records as CSV")
    bench.add_argument("--plot", metavar="PATH.png", help="write a bar chart of fraction of roofline")
    bench.add_argument("--quiet", action="store_true", help="no progress line on stderr")
    bench.add_argument("--keep-going", action="store_true",
                       help="exit 0 even when cases failed (they are still reported; see exit status)")

    info = sub.add_parser("info", help="ISA, threads, versions, TF op library status")
    info.add_argument("--json", action="store_true", help="print JSON")

    build = sub.add_parser("build-ops", help="build (or find in the cache) the fusedopt.keras TF op library")
    build.add_argument("--force", action="store_true", help="rebuild even when cached")
    return parser


def _op_library_status(query: str = "op_library_status") -> Any:
    try:
        import fusedopt.keras as fk
    except Exception as err:  # noqa: BLE001 - report, never crash `info`
        return f"not available (fusedopt.keras: {type(err).__name__}: {err})"
    status = getattr(fk, query, None)
    if status is None:
        return "not available"
    try:
        return status()
    except Exception as err:  # noqa: BLE001
        return f"not available ({type(err).__name__}: {err})"


def info(as_json: bool) -> int:
    """Print what this build runs with."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from fusedopt.bench.suite import machine_info

    data = machine_info()
    data["op_library"] = _op_library_status()
    data["xla_library"] = _op_library_status("xla_library_status")
    if as_json:
        print(json.dumps(data, indent=1, default=str))
        return 0
    b = data.pop("build_info")
    print(f"fusedopt {b['version']}")
    print(f"  ISA: {b['isa']} (available: {', '.join(b['available_isas'])})")
    print(f"  threads: {b['num_threads']}  chunk: {b['chunk_elements']} elements  compiler: {b['compiler']}")
    print(f"  CPU: {data['cpu_model']} ({data['cpu_count']} CPUs), {data['platform']}, Python {data['python']}")
    print("  versions: " + ", ".join(f"{k} {v or 'not installed'}" for k, v in data["versions"].items()))
    op = data["op_library"]
    print("  TF op library: " + (", ".join(f"{k}={v}" for k, v in op.items()) if isinstance(op, dict) else str(op)))
    xla = data["xla_library"]
    print("  XLA FFI handler (JAX backend): "
          + (", ".join(f"{k}={v}" for k, v in xla.items()) if isinstance(xla, dict) else str(xla)))
    return 0


def build_ops(force: bool) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        import fusedopt.keras as fk

        print(fk.build_ops(force=force))
    except Exception as err:  # noqa: BLE001
        print(f"fusedopt build-ops: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    return 0


def bench(args: argparse.Namespace) -> int:
    """Run the suite selected by `args`, print the report, write the files asked for."""
    from fusedopt.bench import report
    from fusedopt.bench.suite import Config, run

    top = fusedopt.get_num_threads()
    config = Config(
        rules=args.rules,
        sizes=args.sizes or (["tiny"] if args.quick else list(DEFAULT_SIZES)),
        dtypes=args.dtypes, impls=args.impls,
        threads=args.threads or sorted({1, top}),
        repeats=args.repeats,
        warmup=args.warmup if args.warmup is not None else (QUICK_WARMUP if args.quick else DEFAULT_WARMUP),
        budget_s=args.budget or (QUICK_BUDGET_S if args.quick else DEFAULT_BUDGET_S),
        seed=args.seed, skips=args.skips, fit=args.fit, quiet=args.quiet,
    )
    doc = run(config)
    print(report.render(doc), flush=True)
    for path, write in ((args.json, lambda p: report.write_json(doc, p)),
                        (args.csv, lambda p: report.write_csv(doc["records"], p)),
                        (args.plot, lambda p: report.write_plot(doc["records"], p))):
        if path:
            write(path)
            print(f"wrote {path}", file=sys.stderr)
    failed = len(doc["errors"])
    if failed:
        print(f"fusedopt bench: {failed} case{'s' if failed != 1 else ''} failed (see Errors)"
              + ("; --keep-going: exit status 0" if args.keep_going else ""), file=sys.stderr)
        if not args.keep_going:
            return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `fusedopt` and `python -m fusedopt`; returns the exit code."""
    args = build_parser().parse_args(argv)
    if args.command == "info":
        return info(args.json)
    if args.command == "build-ops":
        return build_ops(args.force)
    return bench(args)
