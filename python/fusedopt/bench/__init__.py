"""`fusedopt bench`: side-by-side optimizer microbenchmarks against a same-run roofline.

Run ``fusedopt bench`` (or ``python -m fusedopt bench``) for the default
suite, ``fusedopt bench --help`` for the options. From Python::

    from fusedopt.bench import Config, run, report
    doc = run(Config(rules=["adam"], sizes=["tiny"], dtypes=["float32"],
                     impls=["fusedopt", "numpy"], threads=[1]))
    print(report.table(doc["records"]))
    print(report.errors(doc["errors"]))  # the cases that failed (none: empty)

Every case is warmed up, then timed one step at a time; records carry the
median and spread (min, max, IQR), GB/s with the rule's minimal bytes, the
fraction of the roofline (``fusedopt._core.stream_roofline`` over the same
bytes, measured in the same run) and speedups over the baselines measured in
the same run.
"""

from __future__ import annotations

from fusedopt.bench import report
from fusedopt.bench.rules import IMPLEMENTATIONS, RULES, SIZES
from fusedopt.bench.suite import Config, run

__all__ = ["Config", "run", "report", "RULES", "SIZES", "IMPLEMENTATIONS"]
