"""Per-rank host memory of loading a model through ``load_tp_host`` at tp=1 and tp=2 (CPU, gloo).

    OMP_NUM_THREADS=1 python benchmarks/perf/tp_memory.py [--models smollm2-135m tiny-llama]
        [--tp 1 2] [--dtype float32] [--safetensors] [--tp-load auto|sharded|full]
        [--json PATH]

``--safetensors`` first saves each model as a safetensors checkpoint (a temporary
directory, as ``save_pretrained`` writes it) and loads it from there, the way a user's
Hugging Face model is loaded: at tp > 1 each rank then reads only its own slices
(``model.tp_load=sharded``, :mod:`neva_sweep.models.sharded`); ``--tp-load full`` measures
the path where every rank loads the full model first.

Every configuration runs in fresh processes (one per rank, started with
``torch.multiprocessing`` "spawn"; ranks > 1 join a gloo group through
:func:`neva_sweep.models.tp.init_process_group`, as a Ray shard actor does). Each rank
imports what loading needs (DeepSpeed too when tp > 1), records its resident set size
(the *baseline*), resets the kernel's peak counter (``/proc/self/clear_refs``), then calls
``load_tp_host`` and reports:

- ``peak``: the highest resident set size during loading (``VmHWM`` after the reset;
  a thread sampling ``VmRSS`` every 5 ms and ``ru_maxrss``, which includes the imports,
  are recorded alongside as cross-checks), split into ``load`` (the full-model
  ``load_model`` inside ``load_tp_host``, every rank) and ``shard`` (DeepSpeed AutoTP and
  the rest, tp > 1; the peak counter is reset between the two);
- ``steady``: the resident set size after loading, once ``gc.collect()`` has run, and
  ``trim``: the same after glibc's ``malloc_trim(0)`` (freed heap handed back);
- ``params``: the bytes of the parameters and buffers the rank's module holds (logical
  ``numel * element_size``), and ``storage``: the bytes of the distinct storages behind
  them (larger when a shard is a view that keeps a full tensor alive).

Known failure worked around here: at tp > 1 ``load_tp_host("smollm2-135m")`` raises
``ValueError: `.float()` is not supported for quantized model`` (transformers marks a
GGUF-loaded model as quantized through its ``GgufHfQuantizer``, although its weights are
already dequantized to ``dtype``, and ``deepspeed.init_inference`` casts the module to
``dtype``). So that the memory can be measured, each rank here wraps the ``load_model``
that ``load_tp_host`` calls to drop the quantizer of such a model (every parameter already
in ``dtype``) with transformers' ``remove_quantization_config``; records say
``gguf_quantizer_cleared``. ``--no-workaround`` measures the code as it is.

The summary line per model is the ratio of the largest per-rank peak at tp=2 to the peak
at tp=1, as absolute RSS and above the baseline (goal: <= 0.6).
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import resource
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

MIB = 1024 * 1024
GOAL = 0.6


def _status_kib(field: str) -> int:
    """A ``kB`` field of /proc/self/status (VmRSS, VmHWM), in KiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where the kernel refuses."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class _Sampler(threading.Thread):
    """Largest VmRSS seen, sampled every ``period_s``."""

    def __init__(self, period_s: float = 0.005):
        super().__init__(daemon=True)
        self.period_s, self.peak_kib, self._done = period_s, 0, threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            self.peak_kib = max(self.peak_kib, _status_kib("VmRSS"))
            time.sleep(self.period_s)

    def stop(self) -> int:
        self._done.set()
        self.join()
        return max(self.peak_kib, _status_kib("VmRSS"))


def _tensor_bytes(module) -> tuple[int, int]:
    """(logical bytes, distinct storage bytes) of ``module``'s parameters and buffers."""
    logical, storages, seen = 0, 0, set()
    for t in [*module.parameters(), *module.buffers()]:
        if id(t) in seen:
            continue
        seen.add(id(t))
        logical += t.numel() * t.element_size()
    seen_storage = set()
    for t in [*module.parameters(), *module.buffers()]:
        s = t.untyped_storage()
        if s.data_ptr() not in seen_storage:
            seen_storage.add(s.data_ptr())
            storages += s.nbytes()
    return logical, storages


def _instrument(tp_module, dtype: str, clear_quantizer: bool) -> dict:
    """Wrap the ``load_model`` that ``load_tp_host`` calls: record the peak and resident
    set size when it returns (before any sharding), then reset the peak so that the
    sharding's own peak is seen apart; optionally drop the GGUF quantizer of an
    already-dequantized model (see the module docstring)."""
    from neva_sweep.models.host import DTYPES

    load, state = tp_module.load_model, {"cleared": False}

    def load_model(*args, **kwargs):
        host = load(*args, **kwargs)
        state.update(load_model_peak=_status_kib("VmHWM"), load_model_rss=_status_kib("VmRSS"))
        state["reset"] = _reset_peak()
        m = host.model
        if clear_quantizer and getattr(m, "is_quantized", False) and \
                type(m.hf_quantizer).__name__ == "GgufHfQuantizer" and \
                all(p.dtype == DTYPES[dtype] for p in m.parameters()):
            m.hf_quantizer.remove_quantization_config(m)  # transformers' own "dequantized" path
            state["cleared"] = True
        return host

    tp_module.load_model = load_model
    return state


def _malloc_trim() -> bool:
    """Hand glibc's free heap pages back to the kernel; False where there is no glibc."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        return False
    return True


def _rank_main(rank: int, tp: int, model: str, dtype: str, port: int, out_dir: str,
               workaround: bool = True, tp_load: str = "auto") -> None:
    """One rank: load ``model`` (a name, or ``label=directory``) through load_tp_host and
    write its memory figures as JSON."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers.utils import logging as hf_logging

    import neva_sweep.models.tp as tp_module
    from neva_sweep.models.tp import init_process_group, load_tp_host

    hf_logging.disable_progress_bar()  # the GGUF de-quantizing and weight-loading bars
    state = _instrument(tp_module, dtype, clear_quantizer=workaround and tp > 1)
    if tp > 1:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
        import deepspeed  # noqa: F401  (imported before the baseline: loading, not imports)
        import torch.distributed as dist

        init_process_group(rank, tp, "127.0.0.1", port, backend="gloo")
    gc.collect()
    baseline = _status_kib("VmRSS")
    reset = _reset_peak()
    sampler = _Sampler()
    sampler.start()
    t0 = time.perf_counter()
    label, _, source = model.partition("=")
    host = load_tp_host({"name": source or label, "tp_load": tp_load}, tp_size=tp, dtype=dtype)
    load_s = time.perf_counter() - t0
    hwm = _status_kib("VmHWM")
    sampled = sampler.stop()
    full_load = "load_model_peak" in state  # tp_load=sharded never loads the full model
    load_model_peak = (state["load_model_peak"] if full_load else hwm) if reset else sampled
    shard_peak = hwm if reset and (state.get("reset") or not full_load) else None
    peak = max(load_model_peak, shard_peak or 0) if reset else sampled
    gc.collect()
    time.sleep(0.2)
    steady = _status_kib("VmRSS")
    trimmed = _status_kib("VmRSS") if _malloc_trim() else None
    logical, storage = _tensor_bytes(host.model)
    # One forward pass: a model loaded lazily (safetensors memory-mapped by from_pretrained
    # at tp=1) only pages its weights in when it first computes.
    with torch.no_grad():
        host.model(**host.tokenize(["A first forward pass touches every weight."]))
    in_use_peak, in_use_rss = _status_kib("VmHWM"), _status_kib("VmRSS")
    mib = lambda kib: None if kib is None else kib / 1024  # noqa: E731
    rec = dict(
        model=label, tp=tp, rank=rank, dtype=dtype, threads=torch.get_num_threads(),
        tp_load=host.meta.get("tp_load", "single"),
        load_s=round(load_s, 2), baseline_mib=mib(baseline),
        peak_mib=mib(peak), peak_source="VmHWM" if reset else "sampled",
        load_model_peak_mib=mib(load_model_peak),
        load_model_rss_mib=mib(state.get("load_model_rss")),
        shard_peak_mib=mib(shard_peak) if tp > 1 else None,
        peak_sampled_mib=mib(sampled),
        ru_maxrss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        steady_mib=mib(steady), trimmed_mib=mib(trimmed),
        in_use_peak_mib=mib(max(in_use_peak, peak)), in_use_rss_mib=mib(in_use_rss),
        params_mib=logical / MIB, storage_mib=storage / MIB,
        neuron_slices=[list(s) for s in host.neuron_slices[:1]],
        gguf_quantizer_cleared=state["cleared"],
    )
    Path(out_dir, f"{label}-tp{tp}-rank{rank}.json").write_text(json.dumps(rec))
    if tp > 1:
        dist.barrier()
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure(model: str, tp: int, dtype: str = "float32", workaround: bool = True,
            tp_load: str = "auto") -> list[dict]:
    """Per-rank figures of loading ``model`` at ``tp`` ranks, each rank in a fresh process."""
    import torch.multiprocessing as mp

    label = model.partition("=")[0]
    with tempfile.TemporaryDirectory() as out_dir:
        mp.spawn(_rank_main, args=(tp, model, dtype, _free_port(), out_dir, workaround, tp_load),
                 nprocs=tp, join=True)
        return [json.loads(Path(out_dir, f"{label}-tp{tp}-rank{r}.json").read_text())
                for r in range(tp)]


def save_safetensors(model: str, dtype: str, directory: Path) -> str:
    """Save ``model`` as a safetensors checkpoint in ``directory``; the ``label=dir`` spec."""
    from neva_sweep.models.tp import _save_checkpoint

    _save_checkpoint(model, dtype, directory)
    return f"{model}-safetensors={directory}"


def ratios(records: list[dict], model: str, tp: int) -> dict:
    """Largest per-rank peak at ``tp`` over the peak at tp=1: absolute and above baseline,
    while loading, and through loading and a first forward pass (``in_use``: the memory a
    rank needs to start working, the figure the goal is read on)."""
    one = [r for r in records if r["model"] == model and r["tp"] == 1]
    many = [r for r in records if r["model"] == model and r["tp"] == tp]
    if not one or not many:
        return {}
    ref = one[0]
    worst = max(many, key=lambda r: r["peak_mib"])
    worst_delta = max(r["peak_mib"] - r["baseline_mib"] for r in many)
    return dict(model=model, tp=tp,
                peak_ratio=worst["peak_mib"] / ref["peak_mib"],
                peak_above_baseline_ratio=worst_delta / (ref["peak_mib"] - ref["baseline_mib"]),
                steady_ratio=max(r["steady_mib"] for r in many) / ref["steady_mib"],
                trimmed_ratio=(max(r["trimmed_mib"] for r in many) / ref["trimmed_mib"]
                               if ref["trimmed_mib"] else None),
                in_use_ratio=max(r["in_use_peak_mib"] - r["baseline_mib"] for r in many)
                / (ref["in_use_peak_mib"] - ref["baseline_mib"]),
                storage_ratio=max(r["storage_mib"] for r in many) / ref["storage_mib"],
                params_ratio=max(r["params_mib"] for r in many) / ref["params_mib"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["smollm2-135m", "tiny-llama"])
    ap.add_argument("--tp", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--json", type=Path, help="write every rank's figures and the ratios here")
    ap.add_argument("--no-workaround", dest="workaround", action="store_false",
                    help="do not clear the GGUF quantizer (smollm2-135m then fails at tp > 1)")
    ap.add_argument("--safetensors", action="store_true",
                    help="save each model as a safetensors checkpoint and load it from there")
    ap.add_argument("--tp-load", default="auto", choices=["auto", "sharded", "full"],
                    help="model.tp_load at tp > 1")
    args = ap.parse_args()
    if 1 not in args.tp:
        ap.error("--tp must include 1 (the reference of the ratios)")

    os.environ.setdefault("TQDM_DISABLE", "1")  # the ranks' GGUF de-quantizing bars (tqdm)
    records: list[dict] = []
    tmp = tempfile.TemporaryDirectory(prefix="tp_memory_")
    if args.safetensors:
        args.models = [save_safetensors(m, args.dtype, Path(tmp.name, m)) for m in args.models]
    for model in args.models:
        for tp in args.tp:
            print(f"loading {model} at tp={tp} ...", file=sys.stderr, flush=True)
            records += measure(model, tp, args.dtype, args.workaround, args.tp_load)
    args.models = [m.partition("=")[0] for m in args.models]

    cols = ("model", "tp", "how", "rank", "base", "peak", "load", "shard", "peak-base", "steady",
            "trim", "in use", "params", "storage", "load s")
    fmt = "{:<26}{:>3}{:>8}{:>5}{:>6}{:>7}{:>7}{:>7}{:>10}{:>8}{:>7}{:>8}{:>8}{:>9}{:>8}"
    print(f"RSS per rank loading through load_tp_host ({args.dtype}, CPU, gloo; MiB; "
          f"{records[0]['threads']} torch thread(s); peak from {records[0]['peak_source']})")
    print(fmt.format(*cols))
    num = lambda x: "-" if x is None else f"{x:.0f}"  # noqa: E731
    for r in records:
        print(fmt.format(r["model"], r["tp"], r["tp_load"], r["rank"], num(r["baseline_mib"]),
                         num(r["peak_mib"]), num(r["load_model_peak_mib"]),
                         num(r["shard_peak_mib"]), num(r["peak_mib"] - r["baseline_mib"]),
                         num(r["steady_mib"]), num(r["trimmed_mib"]),
                         num(r["in_use_peak_mib"] - r["baseline_mib"]), num(r["params_mib"]),
                         num(r["storage_mib"]), f"{r['load_s']:.1f}")
              + ("  *" if r["gguf_quantizer_cleared"] else ""))
    if any(r["gguf_quantizer_cleared"] for r in records):
        print("* GGUF quantizer removed before sharding (load_tp_host fails without it; "
              "see --no-workaround)")
    summary = []
    for model in args.models:
        for tp in sorted(set(args.tp) - {1}):
            q = ratios(records, model, tp)
            summary.append(q)
            verdict = "meets" if q["in_use_ratio"] <= GOAL else "misses"
            print(f"{model} tp={tp}/tp=1 per-rank peak above baseline through loading and a "
                  f"first forward pass: {q['in_use_ratio']:.2f}x (tensor storage "
                  f"{q['storage_ratio']:.2f}x; while loading only: {q['peak_ratio']:.2f}x "
                  f"(above baseline {q['peak_above_baseline_ratio']:.2f}x; steady "
                  f"{q['steady_ratio']:.2f}x, trimmed {q['trimmed_ratio'] or 0:.2f}x; params "
                  f"{q['params_ratio']:.2f}x)) -> {verdict} "
                  f"the {GOAL}x goal")
    if args.json:
        args.json.write_text(json.dumps(dict(records=records, ratios=summary, goal=GOAL),
                                        indent=1))
        print(f"wrote {args.json}", file=sys.stderr)


if __name__ == "__main__":
    main()
