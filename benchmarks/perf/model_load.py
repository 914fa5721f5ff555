"""Load time of the embedded GGUF model: dequantized from the file against read from the
cached safetensors checkpoint (neva_sweep/models/gguf.py).

Each load runs in a fresh process (as a replica or a user's script loads it: the import of
torch and transformers is timed apart and not counted), the two kinds alternating
``--runs`` times; the median of each is kept, so machine load affects both alike: read the
ratio. The cache is a temporary ``NEVA_SWEEP_CACHE``; the first GGUF load fills it.

    python benchmarks/perf/model_load.py [--runs 3] [--dtype float32] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

# prints the seconds of load_model alone (after the imports)
PROBE = ("import time; from neva_sweep.models import load_model; "
         "t = time.perf_counter(); load_model('smollm2-135m', dtype='{dtype}'); "
         "print(time.perf_counter() - t)")


def load_seconds(cache: str, use_cache: bool, dtype: str) -> float:
    env = {**os.environ, "NEVA_SWEEP_CACHE": cache,
           "NEVA_SWEEP_GGUF_CACHE": "1" if use_cache else "0"}
    out = subprocess.run([sys.executable, "-c", PROBE.format(dtype=dtype)], env=env,
                         capture_output=True, text=True, check=True).stdout
    return float(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3, help="loads of each kind (median kept)")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as cache:
        first = load_seconds(cache, True, args.dtype)  # dequantizes and writes the cache
        gguf, cached = [], []
        for _ in range(args.runs):
            gguf.append(load_seconds(cache, False, args.dtype))
            cached.append(load_seconds(cache, True, args.dtype))
        size = sum(f.stat().st_size for f in Path(cache).rglob("*") if f.is_file())
    rec = {"dtype": args.dtype, "runs": args.runs, "first_load_s": first,
           "gguf_s": statistics.median(gguf), "cached_s": statistics.median(cached),
           "cache_mb": size / 2**20}
    rec["ratio"] = rec["gguf_s"] / rec["cached_s"]
    print(f"smollm2-135m ({args.dtype}): from GGUF {rec['gguf_s']:.2f} s, from the cache "
          f"{rec['cached_s']:.2f} s ({rec['ratio']:.1f}x faster); first load, writing the "
          f"cache, {first:.2f} s; cache {rec['cache_mb']:.0f} MB (medians of {args.runs})")
    if args.json:
        Path(args.json).write_text(json.dumps(rec, indent=2))


if __name__ == "__main__":
    main()
