"""Start-up time of the command line: a mistyped task and ``--help``.

Both answer without importing the model stack (torch, transformers, Ray); the tests check
that structurally (tests/e2e/test_cli.py), this prints wall times, with the import of torch and
transformers alone as the reference the command no longer pays.

    python benchmarks/perf/cli_startup.py [--runs 5]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time

CASES = {
    "python -m neva_sweep task=foo": [sys.executable, "-m", "neva_sweep", "task=foo"],
    "python -m neva_sweep --help": [sys.executable, "-m", "neva_sweep", "--help"],
    "reference: import torch, transformers": [sys.executable, "-c",
                                              "import torch, transformers"],
}


def wall(cmd: list[str], cwd: str) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, capture_output=True, check=False)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5, help="runs per command (median reported)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:  # task=foo leaves runs/foo/ in its cwd
        for name, cmd in CASES.items():
            times = [wall(cmd, tmp) for _ in range(args.runs)]
            print(f"{name:<40} median {statistics.median(times):5.2f} s  "
                  f"(min {min(times):.2f}, max {max(times):.2f}, {args.runs} runs)")


if __name__ == "__main__":
    main()
