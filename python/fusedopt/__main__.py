"""`python -m fusedopt` / `fusedopt`: the command line (bench, info, build-ops)."""

from __future__ import annotations

import sys


def main() -> int:
    """Run the `fusedopt` command line with sys.argv; return its exit code."""
    from fusedopt.bench.cli import main as cli_main

    return cli_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
