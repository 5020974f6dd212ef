"""Issue 2: fp32 Adam, side by side in one run, against the same-run memory roofline.

fusedopt's NumPy API, the NumPy reference, Keras's built-in Adam in
tf.function, PyTorch's fused Adam and the roofline (a stream loop over the
same 28 bytes per element), on 16M parameters in 4 tensors and on 1M
parameters in 1000 tensors. It runs `fusedopt bench` with those options;
extra arguments are passed on (e.g. ``--json adam.json --repeats 20``).

Run: python benchmarks/bench_adam.py [fusedopt bench options]
"""

from __future__ import annotations

import sys

from fusedopt.bench.cli import main

OPTIONS = [
    "bench", "--rules", "adam", "--sizes", "large,small", "--dtypes", "float32",
    "--impls", "fusedopt,numpy,keras-function,torch-fused",
    "--no-skips",  # the default suite runs the NumPy reference on large only
]

if __name__ == "__main__":
    sys.exit(main(OPTIONS + sys.argv[1:]))
