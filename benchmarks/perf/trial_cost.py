"""Cost of one default sweep trial, part by part, against a plain forward over its tokens.

A trial is evaluated as a replica's worker does it (neva_sweep/sweep/worker.py): build the
edit (neuron selection), then ``Evaluator.evaluate`` with the sweep's trial settings
(``judge.*`` / ``capability.*`` with ``sweep.judge`` / ``sweep.capability`` on top,
neva_sweep/conf/experiment/default.yaml). The parts are timed by wrapping the functions
the Evaluator itself calls (the judge's ``judge`` method and the capability measures
``mc_correct``, ``mean_kl``, ``greedy_generate``, ``reply_nll``), so nothing of their
logic is copied here; "other" is the rest of ``evaluate`` (metrics, bootstrap intervals).

A forward pre-hook on the model records every forward call of the trial (token ids and
which positions are real tokens). The baseline replays exactly those calls as plain
forwards: the same rows per call, the same padded shapes and the same positions through
the LM head (``logits_to_keep``), but no edit hooks and no KV cache (a cached call is
replayed on its new tokens alone). The ratio trial / plain is then the overhead of the
trial machinery (edit hooks, cache reuse, log-softmax and KL on the logits, Python) over
the bare model work. Trial and plain runs alternate ``--repeats`` times and the best of
each is kept, so machine load affects both alike; read the ratios, not the absolute times.

    OMP_NUM_THREADS=2 python benchmarks/perf/trial_cost.py [--model smollm2-135m] [--repeats 3]
        [--json trial_cost.json] [override ...]
    # overrides: Hydra overrides of the sweep config, e.g. sweep.capability.mc_limit=40
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

import torch

import neva_sweep as nv
import neva_sweep.evaluation.evaluator as evaluate_module
from neva_sweep.builders import stats_from_config
from neva_sweep.config import compose_config
from neva_sweep.evaluation.evaluator import Evaluator
from neva_sweep.methods import METHODS
from neva_sweep.models.host import ModelHost
from neva_sweep.sweep.run import eval_setup

PARTS = ("build edit", "judge", "mc", "kl", "fluency", "other")
# The capability functions Evaluator.evaluate calls, by the name it imports them under.
CAPABILITY = {"mc_correct": "mc", "mean_kl": "kl", "greedy_generate": "fluency",
              "reply_nll": "fluency"}


@dataclass
class Call:
    """One forward call of the trial: (B, S) token ids, (B, S) real-token mask, and how
    many last positions went through the LM head (0 = all)."""

    part: str
    ids: torch.Tensor
    mask: torch.Tensor
    keep: int = 0


@dataclass
class Recorder:
    """Attributes every forward call of ``host.model`` to the part running it."""

    part: str = "other"
    calls: list[Call] = field(default_factory=list)

    def hook(self, module, args, kwargs) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        mask = kwargs.get("attention_mask")
        if ids is None:
            return
        # With a KV cache the mask covers cached + new positions: keep the new ones (B, S).
        new = (torch.ones_like(ids) if mask is None else mask[:, -ids.shape[1]:]).long()
        keep = int(kwargs.get("logits_to_keep", 0) or 0)
        self.calls.append(Call(self.part, ids.detach().clone(), new.detach().clone(), keep))

    @contextmanager
    def installed(self, host: ModelHost) -> Iterator[None]:
        root = getattr(host.model, "module", host.model)
        handle = root.register_forward_pre_hook(self.hook, with_kwargs=True)
        try:
            yield
        finally:
            handle.remove()


@contextmanager
def timed_parts(ev: Evaluator, rec: Recorder, times: dict[str, float]) -> Iterator[None]:
    """Wrap the judge's ``judge`` and the capability functions the Evaluator calls so that
    their wall time goes to ``times[part]`` and their forward calls to that part."""

    def wrap(fn: Callable, part: str) -> Callable:
        def timed(*args, **kwargs):
            outer, rec.part = rec.part, part
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                times[part] += time.perf_counter() - t0
                rec.part = outer

        return timed

    saved = {name: getattr(evaluate_module, name) for name in CAPABILITY}
    ev.judge.judge = wrap(type(ev.judge).judge.__get__(ev.judge), "judge")  # instance attr
    for name, part in CAPABILITY.items():
        setattr(evaluate_module, name, wrap(saved[name], part))
    try:
        yield
    finally:
        del ev.judge.judge
        for name, fn in saved.items():
            setattr(evaluate_module, name, fn)


def run_trial(ev: Evaluator, stats, value: str, params: dict) -> tuple[dict, list[Call], dict]:
    """One trial as the worker runs it; returns (record, forward calls, wall time per part)."""
    times: dict[str, float] = defaultdict(float)
    rec = Recorder()
    t0 = time.perf_counter()
    edit = METHODS["neva"].build(stats, value, params)
    times["build edit"] = time.perf_counter() - t0
    t1 = time.perf_counter()
    with rec.installed(ev.host), timed_parts(ev, rec, times):
        record = ev.evaluate([(value, edit)], params.get("positions", "all"))[0]
    evaluate_s = time.perf_counter() - t1
    times["other"] = evaluate_s - sum(times[p] for p in PARTS if p not in ("build edit", "other"))
    times["total"] = time.perf_counter() - t0
    return record, rec.calls, dict(times)


@torch.inference_mode()
def plain_replay(host: ModelHost, calls: list[Call]) -> dict[str, float]:
    """Wall time per part of the trial's forward calls run as plain forwards."""
    times: dict[str, float] = defaultdict(float)
    for c in calls:
        t0 = time.perf_counter()
        kwargs = {"logits_to_keep": c.keep} if c.keep else {}
        host.model(input_ids=c.ids, attention_mask=c.mask, **kwargs)
        if c.ids.is_cuda:  # the trial reads every call's result back; so must the baseline
            torch.cuda.synchronize()
        times[c.part] += time.perf_counter() - t0
    times["total"] = sum(times.values())
    return dict(times)


def token_counts(calls: list[Call]) -> dict[str, dict[str, int]]:
    """Per part: forward calls, rows, real tokens and padded positions computed."""
    out: dict[str, dict[str, int]] = {}
    for c in calls:
        d = out.setdefault(c.part, {"calls": 0, "rows": 0, "tokens": 0, "positions": 0})
        d["calls"] += 1
        d["rows"] += c.ids.shape[0]
        d["tokens"] += int(c.mask.sum())
        d["positions"] += c.ids.numel()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="registry name, HF id or path "
                    "(default: the config's model, the embedded SmolLM2-135M)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--value", default="benevolence")
    ap.add_argument("--json", default=None, help="write the figures to this JSON file")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides of the sweep config")
    args = ap.parse_args()

    cfg = compose_config("progress=false", *args.overrides)
    host = nv.load_model(args.model) if args.model else nv.load_model(cfg.model)
    stats = stats_from_config(cfg, host)
    setup = eval_setup(cfg)
    ev = setup.evaluator(host)
    t0 = time.perf_counter()
    ev.base()  # the unedited side: once per replica and cached on disk, not part of a trial
    base_s = time.perf_counter() - t0
    params = dict(METHODS["neva"].defaults)

    best_trial: dict[str, float] = {}
    best_plain: dict[str, float] = {}
    record, calls = None, []
    paired: list[float] = []  # trial / plain of each repeat (measured back to back)
    for _ in range(args.repeats):  # alternate, keep the best of each per part
        record, calls, t = run_trial(ev, stats, args.value, params)
        p = plain_replay(host, calls)
        paired.append(t["total"] / p["total"])
        for best, new in ((best_trial, t), (best_plain, p)):
            for k, v in new.items():
                best[k] = min(best.get(k, float("inf")), v)
    counts = token_counts(calls)

    rows = {}
    for part in (*PARTS, "total"):
        n = counts.get(part, {"calls": 0, "rows": 0, "tokens": 0, "positions": 0})
        if part == "total":
            n = {k: sum(c[k] for c in counts.values()) for k in ("calls", "rows", "tokens",
                                                                  "positions")}
        plain = best_plain.get(part)
        wall = best_trial.get(part, 0.0)
        rows[part] = {**n, "wall_s": wall, "plain_s": plain,
                      "ratio": wall / plain if plain else None}
    cap, judge = setup.capability, setup.judge
    skipped = {"mc": f"mc_limit {cap.mc_limit}" if cap.mc_limit == 0 else None,
               "fluency": "fluency_queries 0, judge makes no replies"
               if not counts.get("fluency") else None}
    result = {
        "model": host.name, "dtype": host.meta.get("dtype"), "device": str(host.device),
        "torch_threads": torch.get_num_threads(), "repeats": args.repeats,
        "value": args.value, "params": params, "n_neurons": record["n_neurons"],
        "judge": asdict(judge), "capability": asdict(cap), "overrides": args.overrides,
        "unedited_side_s": base_s, "parts": rows, "skipped": skipped,
        "trial_over_plain": rows["total"]["ratio"],
        "trial_over_plain_per_repeat": paired,
        "trial_over_plain_median": statistics.median(paired),
        "record": {k: record[k] for k in ("alignment", "nlr", "kl", "acquiescence")},
    }
    print(f"{host.name} ({result['dtype']}, {result['torch_threads']} threads), one default "
          f"NeVA trial toward {args.value} ({record['n_neurons']} neurons, "
          f"{params['rule']} x{params['magnitude']}); judge {judge.name} "
          f"(scenarios_limit {judge.scenarios_limit}), mc_limit {cap.mc_limit}, neutral_limit "
          f"{cap.neutral_limit}, fluency_queries {cap.fluency_queries}; best of {args.repeats}")
    print(f"{'part':<12}{'calls':>7}{'rows':>7}{'tokens':>9}{'padded':>9}{'trial s':>10}"
          f"{'plain s':>10}{'ratio':>8}")
    for part, r in rows.items():
        note = f"  skipped ({skipped[part]})" if skipped.get(part) else ""
        plain = "" if r["plain_s"] is None else f"{r['plain_s']:.2f}"
        ratio = "" if r["ratio"] is None else f"{r['ratio']:.2f}"
        print(f"{part:<12}{r['calls']:>7}{r['rows']:>7}{r['tokens']:>9}{r['positions']:>9}"
              f"{r['wall_s']:>10.2f}{plain:>10}{ratio:>8}{note}")
    print(f"trial / plain forward over the same tokens and batches: "
          f"{result['trial_over_plain']:.2f}x best over best; per repeat "
          f"{', '.join(f'{r:.2f}' for r in paired)} (unedited side, once per replica: "
          f"{base_s:.1f} s)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
