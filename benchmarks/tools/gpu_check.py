"""GPU check: throughput, trial batching and DeepSpeed edits on one large GPU, as one JSON.

Prepared for one H200-class GPU with no network, in at most 8 minutes
(benchmarks/tools/gpu_check.sh runs it under ``timeout 480``). Sections:

- ``forward``: a Llama-3-8B-shaped model (LlamaConfig: hidden 4096, 32 layers,
  intermediate 14336, 32 heads, 8 KV heads, vocabulary 128256) built from its config with
  random bfloat16 weights directly on the GPU (nothing downloaded), fed the
  identification probes through the embedded tokenizer: plain forward tokens/s (the
  statistics pass's batches and ``logits_to_keep=1``, benchmarks/perf/stats_throughput.py),
  the statistics pass and an edited forward as ratios of it, one default sweep trial
  against a plain replay of its forward calls (benchmarks/perf/trial_cost.py), peak memory;
- ``deepspeed``: DeepSpeed ``init_inference`` on one device (tp_size 1, no kernel
  injection, called as neva_sweep/models/tp.py calls AutoTP) with edit hooks, on the
  embedded model: magnitude 0 is bitwise the unedited engine, and the engine's logits,
  unedited and edited, equal the plain model's within a bfloat16 tolerance;
- ``trial_batching``: trials/hour with K = 1, 4, 8 trials per Evaluator call
  (benchmarks/perf/trial_batching.py) on the 8B-shaped and the embedded model, with the
  sweep's batch sizes (``default``) and with batch sizes scaled by K (``scaled``: on a
  GPU the default forced-choice batch holds one scenario, so K trials cannot fill it).
- ``sharded_load``: the 8B-shaped model of ``forward`` saved as a safetensors checkpoint,
  then loaded by fresh processes through ``load_tp_host`` at tp=1 and at tp=2 with
  ``model.tp_load=sharded`` (each rank reads only its slices; benchmarks/perf/tp_memory.py):
  per-rank host memory (the ranks run on CPU with gloo: one GPU cannot hold two NCCL
  ranks) and the tp=2/tp=1 ratio through loading and a first forward pass;

Each section runs in its own try/except: a failure becomes the section's ``error`` (and
the last lines of its traceback) and the next section runs. The JSON is rewritten after
every section, so a run cut short still leaves what was done; sections that would start
past ``--budget-s`` are recorded as skipped. ``--tiny`` runs the same code on CPU with a
2-layer model, a few items and K = 1, 2 (tests/integration/test_gpu_check.py runs it).

    python benchmarks/tools/gpu_check.py [--tiny] [--out PATH] [--budget-s 420]
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import os
import platform
import resource
import socket
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

# the perf benchmarks it reuses (benchmarks/perf/)
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "perf"))
import tp_memory  # noqa: E402
import trial_batching  # noqa: E402
import trial_cost  # noqa: E402
from stats_throughput import plain_pass  # noqa: E402

import neva_sweep as nv  # noqa: E402
from neva_sweep.config import DEFAULT_MAGNITUDE, compose_config  # noqa: E402
from neva_sweep.edits.neuron import NeuronEdit, edit_rows  # noqa: E402
from neva_sweep.evaluation.evaluator import Evaluator  # noqa: E402
from neva_sweep.files import write_text_atomic  # noqa: E402
from neva_sweep.methods import METHODS  # noqa: E402
from neva_sweep.models.host import DTYPES, ModelHost, host_from_model  # noqa: E402
from neva_sweep.neurons.selection import DEFAULT_SPARSITY, ValueNeurons  # noqa: E402
from neva_sweep.neurons.stats import StatsConfig, collect_stats  # noqa: E402
from neva_sweep.sweep.run import eval_setup  # noqa: E402

LLAMA3_8B = dict(hidden_size=4096, num_hidden_layers=32, intermediate_size=14336,
                 num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
                 rope_theta=500000.0, max_position_embeddings=8192)
TINY_LLAMA = dict(hidden_size=64, num_hidden_layers=2, intermediate_size=96,
                  num_attention_heads=4, num_key_value_heads=2, vocab_size=None,  # tokenizer's
                  rope_theta=500000.0, max_position_embeddings=512)
VALUE = "benevolence"
RESERVE_S = 240  # forward stops repeating when less is left: the later sections need it
TEXTS = ["I help my neighbour carry boxes to the new house.",
         "Power and wealth matter most to me.", "Hi"]


@dataclass(frozen=True)
class Settings:
    """Sizes of one run: the GPU check proper, or its CPU miniature (``--tiny``)."""

    tiny: bool
    device: str
    dtype: str
    llama: dict
    embedded: str  # registry name of the "embedded model" sections use
    probe_stride: int  # keep every n-th identification probe
    repeats: int  # best-of for throughput and trial cost
    n_trials: int  # trials per K for trial batching (a multiple of max(ks))
    ks: tuple[int, ...] = (1, 4, 8)
    overrides: tuple[str, ...] = ()  # Hydra overrides of the sweep's trial settings


FULL = Settings(False, "cuda", "bfloat16", LLAMA3_8B, "smollm2-135m", 1, 3, 8)
TINY = Settings(True, "cpu", "bfloat16", TINY_LLAMA, "tiny-llama", 12, 1, 2, ks=(1, 2),
                overrides=("sweep.judge.scenarios_limit=2", "sweep.capability.neutral_limit=2"))


@dataclass
class Context:
    """What sections share: settings, the deadline, and models built by earlier sections."""

    settings: Settings
    deadline: float
    keep: dict[str, Any] = field(default_factory=dict)

    @property
    def dev(self) -> torch.device:
        """The device, checked: a missing GPU fails the section at once, not midway."""
        dev = torch.device(self.settings.device)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("no CUDA device visible to torch (run with --tiny on CPU)")
        return dev

    def time_left(self) -> float:
        return self.deadline - time.monotonic()

    def probes(self) -> nv.data.ProbeSet:
        if "probes" not in self.keep:
            self.keep["probes"] = nv.load_probes().shard(0, self.settings.probe_stride)
        return self.keep["probes"]


# --- helpers ------------------------------------------------------------------------------


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def timed(fn: Callable[[], Any], dev: torch.device) -> tuple[float, Any]:
    """(wall seconds, result) of ``fn()``, with the device's queue drained on both sides."""
    sync(dev)
    t0 = time.perf_counter()
    out = fn()
    sync(dev)
    return time.perf_counter() - t0, out


def reset_peak(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)


def peak_memory(dev: torch.device) -> tuple[float, str]:
    """(GiB, what it is): CUDA's peak allocation, or the process's peak RSS on CPU."""
    if dev.type == "cuda":
        return torch.cuda.max_memory_allocated(dev) / 2**30, "torch.cuda.max_memory_allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "process max RSS"


def build_llama(s: Settings, name: str) -> ModelHost:
    """A LlamaConfig model of ``s.llama``'s sizes with random weights, built on the device."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    from neva_sweep.models.registry import embedded_tokenizer

    tok = embedded_tokenizer()
    sizes = dict(s.llama)
    sizes["vocab_size"] = sizes["vocab_size"] or len(tok)
    cfg = LlamaConfig(**sizes, tie_word_embeddings=False, pad_token_id=tok.pad_token_id,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    with torch.device(s.device):  # weights are created (and initialised) on the device
        model = AutoModelForCausalLM.from_config(cfg, dtype=DTYPES[s.dtype])
    if next(model.parameters()).device.type != torch.device(s.device).type:
        model.to(s.device)  # a transformers version that ignored the device context
    return host_from_model(model, tok, name, meta={"spec": name, "dtype": s.dtype})


def trial_evaluator(host: ModelHost, s: Settings, scale: int = 1) -> Evaluator:
    """An Evaluator with the default sweep's trial settings, batch sizes times ``scale``."""
    setup = eval_setup(compose_config("progress=false", "cache_dir=null", *s.overrides))
    judge = replace(setup.judge, batch_size=setup.judge.batch_size * scale)
    cap = replace(setup.capability, batch_size=setup.capability.batch_size * scale)
    return Evaluator(host, judge, cap, setup.data, None)


def edited_pass(host: ModelHost, probes, cfg: StatsConfig, spec: NeuronEdit) -> int:
    """The plain pass with one neuron edit on every row."""
    with edit_rows(host, [spec], torch.zeros(1, dtype=torch.long)):
        return plain_pass(host, probes, cfg)


# --- sections -----------------------------------------------------------------------------


def section_environment(ctx: Context) -> dict:
    dev = torch.device(ctx.settings.device)
    versions = {}
    for pkg in ("torch", "transformers", "deepspeed", "neva_sweep"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    out = {"mode": "tiny" if ctx.settings.tiny else "full", "device": str(dev),
           "dtype": ctx.settings.dtype, "versions": versions, "python": platform.python_version(),
           "torch_threads": torch.get_num_threads(), "cuda_available": torch.cuda.is_available()}
    if dev.type == "cuda" and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(dev)
        out.update(gpu=props.name, gpu_memory_gib=props.total_memory / 2**30,
                   gpu_count=torch.cuda.device_count())
    return out


def section_forward(ctx: Context) -> dict:
    s, dev = ctx.settings, ctx.dev
    reset_peak(dev)
    build_s, host = timed(lambda: build_llama(s, "llama3-8b-shaped"), dev)
    probes, cfg = ctx.probes(), StatsConfig()
    # The timed statistics pass reads the texts the plain pass reads: the probes, without
    # the gate's neutral texts and the stance pairs.
    probe_part = dataclasses.replace(probes, neutral=(), pairs=())
    n_tokens = plain_pass(host, probes, cfg)  # warm-up
    stats = collect_stats(host, probes, cfg, progress=False)  # warm-up; gives the neurons
    nmap = nv.select_neurons(stats, VALUE, sparsity=DEFAULT_SPARSITY)
    spec = NeuronEdit(nmap[VALUE], "add", DEFAULT_MAGNITUDE)
    passes = {"plain": lambda: plain_pass(host, probes, cfg),
              "stats": lambda: collect_stats(host, probe_part, cfg, progress=False),
              "edited": lambda: edited_pass(host, probes, cfg, spec)}
    best = dict.fromkeys(passes, math.inf)
    repeats = 0
    while repeats < s.repeats and (repeats == 0 or ctx.time_left() > RESERVE_S):
        for name, fn in passes.items():  # alternating, best of each
            best[name] = min(best[name], timed(fn, dev)[0])
        repeats += 1
    ev = trial_evaluator(host, s)
    base_s, _ = timed(ev.base, dev)
    params = dict(METHODS["neva"].defaults)
    trial_s = plain_s = math.inf
    for r in range(s.repeats):
        if r and ctx.time_left() < RESERVE_S:
            break
        _, calls, t = trial_cost.run_trial(ev, stats, VALUE, params)
        trial_s = min(trial_s, t["total"])
        plain_s = min(plain_s, trial_cost.plain_replay(host, calls)["total"])
    tokens = trial_cost.token_counts(calls)
    ctx.keep["llama8b"] = (host, stats)
    mem, mem_kind = peak_memory(dev)
    plain_tps = n_tokens / best["plain"]
    return {
        "model": {k: v for k, v in s.llama.items()} | {"vocab_size": host.model.config.vocab_size},
        "n_parameters": sum(p.numel() for p in host.model.parameters()),
        "build_s": build_s, "n_texts": len(probes), "n_tokens": n_tokens,
        "batch_size": cfg.batch_size, "repeats": repeats,
        "plain_tokens_per_s": plain_tps,
        "stats_tokens_per_s": n_tokens / best["stats"],
        "stats_over_plain": best["plain"] / best["stats"],
        "edited_tokens_per_s": n_tokens / best["edited"],
        "edited_over_plain": best["plain"] / best["edited"],
        "edit_neurons": spec.n_neurons,
        "unedited_side_s": base_s,
        "trial_s": trial_s, "trial_plain_s": plain_s, "trial_over_plain": trial_s / plain_s,
        "trial_tokens": sum(c["tokens"] for c in tokens.values()),
        "trial_forward_calls": sum(c["calls"] for c in tokens.values()),
        "trial_parts": tokens,
        "peak_memory_gib": mem, "peak_memory_kind": mem_kind,
    }


def batching_figures(ctx: Context, host: ModelHost, stats) -> dict:
    """Trials/hour at each K, default and scaled batch sizes; metric agreement with K=1."""
    s = ctx.settings
    trials = trial_batching.trial_params(s.n_trials)
    out: dict[str, Any] = {"n_trials": len(trials), "skipped": []}
    reference: list[dict] | None = None
    for variant in ("default", "scaled"):
        shared = trial_evaluator(host, s) if variant == "default" else None
        worst = 0.0
        for k in s.ks:
            if ctx.time_left() < 30:
                out["skipped"].append(f"{variant} K={k}: time budget")
                continue
            ev = shared or trial_evaluator(host, s, scale=k)
            ev.base()  # the unedited side is per replica, not per trial: not timed
            trial_batching.run(ev, stats, trials[:k], k)  # warm-up at this batch shape
            wall, (_, recs) = timed(
                lambda ev=ev, k=k: trial_batching.run(ev, stats, trials, k), ctx.dev)
            reference = reference or recs
            worst = max([worst] + [abs(a[m] - b[m]) for a, b in zip(recs, reference)
                                   for m in ("alignment", "kl")])
            out[f"{variant}_k{k}"] = {"trials_per_hour": 3600 * len(trials) / wall,
                                      "wall_s": wall,
                                      "judge_batch_size": ev.judge_cfg.batch_size,
                                      "capability_batch_size": ev.cap.batch_size}
        out[f"{variant}_max_metric_diff"] = worst  # vs default K=1 (batch composition, bf16)
        if f"{variant}_k1" in out and f"{variant}_k{s.ks[-1]}" in out:
            out[f"{variant}_speedup_k{s.ks[-1]}"] = (
                out[f"{variant}_k{s.ks[-1]}"]["trials_per_hour"]
                / out[f"{variant}_k1"]["trials_per_hour"])
    return out


def section_trial_batching(ctx: Context) -> dict:
    s, _ = ctx.settings, ctx.dev
    out: dict[str, Any] = {"ks": list(s.ks)}

    def llama():
        if "llama8b" not in ctx.keep:
            raise RuntimeError("the forward section did not build the 8B-shaped model")
        return ctx.keep["llama8b"]

    def embedded():
        host = nv.load_model(s.embedded, dtype=s.dtype, device=s.device)
        return host, collect_stats(host, ctx.probes(), progress=False)

    for label, make in (("llama8b", llama), ("embedded", embedded)):
        try:
            out[label] = {"model": label if label != "embedded" else s.embedded,
                          **batching_figures(ctx, *make())}
        except Exception as e:  # one model's failure keeps the other's figures
            out[label] = failure(e)
    errors = [f"{k}: {v['error']}" for k, v in out.items() if isinstance(v, dict) and
              v.get("error")]
    if errors:  # the section is marked failed, the other model's figures kept
        out.update(ok=False, error="; ".join(errors))
    return out


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def section_deepspeed(ctx: Context) -> dict:
    """AutoTP at tp_size 1 keeps the HF modules, so edit hooks see the same activations."""
    import torch.distributed as dist

    from neva_sweep.models.arch import neuron_sites
    from neva_sweep.models.tp import _autotp, _local_width, init_process_group

    s, dev = ctx.settings, ctx.dev
    host = nv.load_model(s.embedded, dtype=s.dtype, device=s.device)
    created = not dist.is_initialized()
    if created:  # DeepSpeed needs a process group, even of one
        init_process_group(0, 1, "127.0.0.1", free_port())
    try:
        module = _autotp(copy.deepcopy(host.model), 1, DTYPES[s.dtype], s.device)
        sites = neuron_sites(module)
        widths = [_local_width(site) for site in sites]
        ds = ModelHost(module, host.tokenizer, host.name, sites, [(0, w) for w in widths],
                       widths, dict(host.meta, engine="deepspeed"))
        gen = torch.Generator().manual_seed(0)
        k = max(2, math.ceil(DEFAULT_SPARSITY * host.n_neurons))
        layer = torch.randint(0, host.n_layers, (k,), generator=gen)
        index = torch.stack([torch.randint(0, host.layer_sizes[int(i)], (1,), generator=gen)[0]
                             for i in layer])
        neurons = ValueNeurons(layer, index, torch.ones(k), torch.randn(k, generator=gen),
                               torch.rand(k, generator=gen) + 0.5)
        zero, live = NeuronEdit(neurons, "add", 0.0), NeuronEdit(neurons, "add", 4.0)
        batch = host.tokenize(TEXTS)
        with torch.inference_mode():
            plain = host.model(**batch).logits.float()  # (B, S, vocab)
            with edit_rows(host, [live], torch.zeros(1, dtype=torch.long)):
                plain_edited = host.model(**batch).logits.float()
            engine = ds.model(**batch).logits.float()
            # Row 0: magnitude 0; row 1: the live edit; row 2: no edit (one batch).
            with edit_rows(ds, [zero, live], torch.tensor([0, 1, -1])):
                mixed = ds.model(**batch).logits.float()
        sync(dev)
        scale = float(plain.abs().max())
        tol = 2 * torch.finfo(DTYPES[s.dtype]).eps * scale  # two bf16 steps of the largest logit
        unedited_diff = float((engine - plain).abs().max())
        edited_diff = float((mixed[1] - plain_edited[1]).abs().max())
        return {
            "model": s.embedded, "site_type": type(sites[0]).__name__,
            "module_type": type(module).__name__, "n_edit_neurons": k,
            "zero_bitwise": bool(torch.equal(mixed[0], engine[0])
                                 and torch.equal(mixed[2], engine[2])),
            "edit_changes_logits": bool(not torch.equal(mixed[1], engine[1])),
            "edit_max_abs_change": float((mixed[1] - engine[1]).abs().max()),
            "bitwise_equal_plain": bool(torch.equal(engine, plain)),
            "unedited_max_abs_diff": unedited_diff, "edited_max_abs_diff": edited_diff,
            "logit_scale": scale, "tolerance": tol,
            "matches_plain": unedited_diff <= tol and edited_diff <= tol,
        }
    finally:
        if created and dist.is_initialized():
            dist.destroy_process_group()


def section_sharded_load(ctx: Context) -> dict:
    """Per-rank host memory of loading the 8B-shaped checkpoint at tp=1 and tp=2 (sharded)."""
    import tempfile

    s = ctx.settings
    host = ctx.keep["llama8b"][0] if "llama8b" in ctx.keep else build_llama(s, "llama3-8b-shaped")
    with tempfile.TemporaryDirectory(prefix="gpu_check_ckpt_") as tmp:
        t0 = time.perf_counter()
        host.model.save_pretrained(tmp, safe_serialization=True)
        host.tokenizer.save_pretrained(tmp)
        save_s = time.perf_counter() - t0
        spec = f"llama3-8b-shaped={tmp}"
        records = [*tp_memory.measure(spec, 1, s.dtype),
                   *tp_memory.measure(spec, 2, s.dtype, tp_load="sharded")]
    ratio = tp_memory.ratios(records, "llama3-8b-shaped", 2)
    return {"save_s": save_s, "records": records, **ratio,
            "meets_goal": ratio["in_use_ratio"] <= tp_memory.GOAL}


SECTIONS: dict[str, tuple[Callable[[Context], dict], float]] = {
    # name: (function, seconds it needs at least to be worth starting)
    "environment": (section_environment, 0),
    "forward": (section_forward, 60),
    "deepspeed": (section_deepspeed, 30),
    "trial_batching": (section_trial_batching, 60),
    "sharded_load": (section_sharded_load, 90),
}


def failure(e: BaseException) -> dict:
    tail = traceback.format_exception(type(e), e, e.__traceback__)[-3:]
    return {"ok": False, "error": f"{type(e).__name__}: {e}", "traceback": "".join(tail)}


def run(settings: Settings, out_path: Path, budget_s: float) -> dict:
    ctx = Context(settings, time.monotonic() + budget_s)
    result: dict[str, Any] = {"command": " ".join(sys.argv), "budget_s": budget_s,
                              "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                              "sections": {}}
    t_start = time.perf_counter()
    for name, (fn, needs) in SECTIONS.items():
        if ctx.time_left() < needs:
            result["sections"][name] = {"ok": False, "skipped": "time budget",
                                        "error": f"skipped: {ctx.time_left():.0f} s left"}
        else:
            t0 = time.perf_counter()
            try:
                result["sections"][name] = {"ok": True, "error": None, **fn(ctx)}
            except Exception as e:
                result["sections"][name] = failure(e)
            result["sections"][name]["wall_s"] = time.perf_counter() - t0
            print(f"gpu_check: {name}: {'ok' if result['sections'][name]['ok'] else 'FAILED'} "
                  f"({result['sections'][name]['wall_s']:.1f} s)", flush=True)
        result["wall_s"] = time.perf_counter() - t_start
        write_text_atomic(out_path, json.dumps(result, indent=2, default=str))
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="CPU miniature (tests)")
    ap.add_argument("--out", default=None, help="JSON path (default $OUT/gpu_check.json, "
                    "else gpu_check.json)")
    ap.add_argument("--budget-s", type=float, default=420.0,
                    help="start no section after this many seconds")
    args = ap.parse_args()
    default = Path(os.environ["OUT"]) / "gpu_check.json" if os.environ.get("OUT") else None
    out = Path(args.out) if args.out else default or Path("gpu_check.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    settings = TINY if args.tiny else FULL
    if not args.tiny and not torch.cuda.is_available():
        print("gpu_check: no CUDA device; the sections will fail (use --tiny on CPU)")
    result = run(settings, out, args.budget_s)
    failed = [k for k, v in result["sections"].items() if not v.get("ok")]
    print(f"gpu_check: {len(result['sections']) - len(failed)}/{len(result['sections'])} "
          f"sections ok{' (failed: ' + ', '.join(failed) + ')' if failed else ''}; "
          f"{result['wall_s']:.0f} s; wrote {out}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
