"""fp32 Adam on a CUDA device, side by side in one run: fusedopt's CUDA engine,
PyTorch's fused CUDA Adam, and a device-to-device copy of the same bytes.

Two layouts: 64M parameters in 4 tensors, and 1M parameters in 1000 tensors.
Adam reads p, g, m, v and writes p, m, v: 28 bytes per fp32 parameter. The
baseline copies a buffer of 14 bytes per parameter (14 read + 14 written), the
same 28 bytes of memory traffic, in one cudaMemcpy. Every number is the time
of one step: CUDA events around `--inner` steps, `--repeats` times, after
`--warmup` steps; the median and the spread (min to max) are printed, and
effective bandwidth (28 bytes per parameter / median time).

fusedopt is timed through `fusedopt.ops.adam_` on PyTorch CUDA tensors (the
Python call, argument checks and the launches: the 1000-tensor layout shows
the per-tensor host cost), PyTorch through `torch.optim.Adam(fused=True)`.

Run: python benchmarks/bench_cuda.py [--repeats 20] [--json out.json]
Exits with a message (status 0) where no CUDA device is usable.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys


def _no_gpu(reason: str) -> None:
    print(f"bench_cuda: skipped: {reason}")
    sys.exit(0)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--inner", type=int, default=10, help="steps per timed repeat")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--layouts", default="64M/4,1M/1000")
    args = ap.parse_args(argv)

    import fusedopt

    info = fusedopt.build_info()
    if not info["cuda_compiled"]:
        _no_gpu("this fusedopt build has no CUDA kernels (built with FUSEDOPT_CUDA=OFF or "
                "without nvcc)")
    if info["cuda_devices"] == 0:
        _no_gpu(f"no CUDA device ({info['cuda_status']})")
    try:
        import torch
    except ImportError:
        _no_gpu("PyTorch is needed for CUDA tensors and the baselines")
    if not torch.cuda.is_available():
        _no_gpu("PyTorch sees no CUDA device (a CPU-only PyTorch build?)")

    device = torch.device("cuda")
    layouts = {"64M/4": [16 << 20] * 4, "1M/1000": [1000] * 1000}
    results = {"device": torch.cuda.get_device_name(device), "torch": torch.__version__,
               "fusedopt": fusedopt.__version__, "build_info": info, "layouts": {}}
    print(f"device: {results['device']}; torch {torch.__version__}; fusedopt "
          f"{fusedopt.__version__} (CUDA runtime {info['cuda_runtime']})")

    def time_steps(step) -> list[float]:
        for _ in range(args.warmup):
            step()
        torch.cuda.synchronize()
        times = []
        for _ in range(args.repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(args.inner):
                step()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3 / args.inner)  # seconds per step
        return times

    for name in args.layouts.split(","):
        sizes = layouts[name]
        n = sum(sizes)
        gen = torch.Generator(device=device).manual_seed(0)

        def tensors():
            return [torch.randn(s, device=device, generator=gen) for s in sizes]

        # fusedopt: the functional kernel over lists (state owned here).
        p, g = tensors(), tensors()
        m, v = [torch.zeros_like(x) for x in p], [torch.zeros_like(x) for x in p]
        counter = {"t": 0}

        def fusedopt_step():
            counter["t"] += 1
            fusedopt.ops.adam_(p, g, m, v, learning_rate=1e-3, step=counter["t"])

        # PyTorch's fused CUDA Adam on the same sizes.
        tp = [torch.nn.Parameter(x) for x in tensors()]
        for x, gx in zip(tp, tensors()):
            x.grad = gx
        opt = torch.optim.Adam(tp, lr=1e-3, eps=1e-7, fused=True)

        # The copy baseline: 14 bytes per parameter, read once and written once.
        src = torch.empty(14 * n, dtype=torch.uint8, device=device)
        dst = torch.empty_like(src)

        rows = {"fusedopt (CUDA)": time_steps(fusedopt_step),
                "torch Adam(fused=True)": time_steps(opt.step),
                "copy of the same bytes": time_steps(lambda: dst.copy_(src))}
        print(f"\n{name}: {n / 1e6:.1f}M params in {len(sizes)} tensors, {28 * n / 1e6:.0f} MB "
              "of traffic per step")
        print(f"  {'':26s} {'median':>10s} {'min':>10s} {'max':>10s} {'GB/s':>8s}")
        out = {}
        for label, ts in rows.items():
            med = statistics.median(ts)
            gbs = 28 * n / med / 1e9
            out[label] = {"median_s": med, "min_s": min(ts), "max_s": max(ts), "gb_per_s": gbs,
                          "times_s": ts}
            print(f"  {label:26s} {med * 1e6:8.1f}us {min(ts) * 1e6:8.1f}us "
                  f"{max(ts) * 1e6:8.1f}us {gbs:8.0f}")
        results["layouts"][name] = {"params": n, "tensors": len(sizes), "bytes_per_step": 28 * n,
                                    "results": out}
        del p, g, m, v, tp, opt, src, dst
        torch.cuda.empty_cache()

    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
