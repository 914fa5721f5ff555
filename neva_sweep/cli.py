"""CLI tasks: plain ``run(cfg)`` functions behind ``python -m neva_sweep task=...``.

Each task reads the composed config and writes its outputs under ``out``, the run
directory (``hydra.run.dir=DIR``; by default runs/<task>, runs/<experiment> for the sweep:
:func:`neva_sweep.config.run_name`).
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from omegaconf import DictConfig, OmegaConf

from .builders import (
    evaluator_from_config,
    host_from_config,
    identify_probes,
    selection_kwargs,
    stats_from_config,
)
from .config import ConfigError, StatsConfig
from .data import load_probes
from .plugins import load_plugins
from .registry import Registry
from .values import check_value

log = logging.getLogger(__name__)

if TYPE_CHECKING:  # the model stack (torch, transformers) is imported inside the tasks, so
    # that `python -m neva_sweep --help` and a mistyped task answer without loading it
    from .edits.kind import EditKind
    from .models.host import ModelHost
    from .neurons.selection import NeuronMap
    from .neurons.stats import NeuronStats
    from .sweep.plan import SweepPlan

# task(cfg, out, **what its preflight built): only task=sweep takes something (plan=)
TASKS: Registry[Callable[..., None]] = Registry("task")


def edit_value(cfg: DictConfig) -> str:
    """The value to steer toward: ``value=`` (shorthand) or ``edit.value=``."""
    value = cfg.value if cfg.value is not None else cfg.edit.value
    if value is None:
        raise ValueError("no value to steer toward: set value=<name> (or edit.value=<name>)")
    return check_value(value)


@TASKS.add("identify")
def identify(cfg: DictConfig, out: Path) -> None:
    """Statistics + neuron selection for all ten values -> neurons/<model>.{safetensors,json}."""
    from .neurons.selection import select_neurons

    host = host_from_config(cfg)
    stats = stats_from_config(cfg, host)
    nmap = select_neurons(stats, **selection_kwargs(cfg))
    out = out / "neurons"
    out.mkdir(parents=True, exist_ok=True)
    stats.save(out / f"{host.name}.safetensors")
    summary = nmap.summary()
    if stats.gate is not None:  # held out: validate probes vs capability neutral texts
        summary["gate"], summary["value_gate"] = gate_summary(cfg, stats, host)
    (out / f"{host.name}.json").write_text(json.dumps(summary, indent=2))
    print(f"{'value':<16}{'neurons':>8}  top layers")
    for v in nmap.values:
        counts = nmap.layer_counts(v)
        top = sorted(range(len(counts)), key=lambda i: -counts[i])[:3]
        print(f"{v:<16}{len(nmap[v]):>8}  " + ", ".join(f"L{i}:{counts[i]}" for i in top))
    if "gate" in summary:
        g = summary["gate"]
        print(f"gate (layer {g['layer']}): accuracy {g['accuracy']:.3f} (balanced "
              f"{g['balanced_accuracy']:.3f}) on {g['n_value']} validate probes vs "
              f"{g['n_neutral']} held-out neutral texts; mean g {g['mean_g_value']:.3f} vs "
              f"{g['mean_g_neutral']:.3f}")
        if "chat" in g:
            c = g["chat"]
            print(f"  chat-templated: accuracy {c['accuracy']:.3f} (balanced "
                  f"{c['balanced_accuracy']:.3f}); mean g {c['mean_g_value']:.3f} vs "
                  f"{c['mean_g_neutral']:.3f}")
        log.info("gate accuracy %.3f (balanced %.3f, layer %d)", g["accuracy"],
                 g["balanced_accuracy"], g["layer"])
        m = summary["value_gate"]["macro"]
        print(f"value gate (one-vs-rest per value, macro mean): accuracy {m['accuracy']:.3f} "
              f"(balanced {m['balanced_accuracy']:.3f}); mean g {m['mean_g_value']:.3f} on "
              f"the value's probes, {m['mean_g_rest']:.3f} on other values', "
              f"{m['mean_g_neutral']:.3f} on neutral texts (never trained on)")
    log.info("wrote %s.safetensors and %s.json", out / host.name, out / host.name)


def gate_summary(cfg: DictConfig, stats: NeuronStats, host: ModelHost) -> tuple[dict, dict]:
    """:func:`neva_sweep.neurons.gate.gate_accuracy` and
    :func:`~neva_sweep.neurons.gate.value_gate_accuracy`
    on ``data.probes``' validate split and the capability part of ``data.neutral`` (texts
    the gates never saw)."""
    from .data import load_records, neutral_split
    from .neurons.gate import gate_accuracy, value_gate_accuracy

    validate = load_probes(cfg.data.probes, split="validate", neutral=False)
    neutral = neutral_split(load_records("neutral", cfg.data.neutral), "capability")
    return (gate_accuracy(stats, host, validate, neutral),
            value_gate_accuracy(stats, host, validate, neutral))


def config_edit(cfg: DictConfig, stats: NeuronStats, nmap: NeuronMap, value: str):
    """The neuron edit ``edit.*`` describes (rule, magnitude, positions, gate)."""
    from .edits.neuron import NeuronEdit
    from .neurons.gate import gate_of

    return NeuronEdit(nmap[value], cfg.edit.rule, float(cfg.edit.magnitude),
                      cfg.edit.positions, gate=gate_of(stats, cfg.edit.gate, value))


def side_by_side(left: str, right: str, titles: tuple[str, str]) -> str:
    width = max(30, (shutil.get_terminal_size((100, 20)).columns - 3) // 2)
    a = [titles[0], "-" * len(titles[0])] + textwrap.wrap(left, width)
    b = [titles[1], "-" * len(titles[1])] + textwrap.wrap(right, width)
    rows = max(len(a), len(b))
    a += [""] * (rows - len(a))
    b += [""] * (rows - len(b))
    return "\n".join(f"{x:<{width}} | {y}" for x, y in zip(a, b))


def stats_inputs_hash_of(cfg: DictConfig) -> str:
    """:func:`neva_sweep.neurons.stats.inputs_hash` of the statistics ``cfg`` selects (data.probes,
    the gate part of data.neutral, stats.*), known without computing them."""
    from dataclasses import asdict

    from .neurons.stats import inputs_hash

    probes = identify_probes(cfg)
    return inputs_hash(probes.sha256, asdict(StatsConfig(**OmegaConf.to_container(cfg.stats))))


def best_edit(cfg: DictConfig) -> tuple[dict, ModelHost, EditKind]:
    """The edit chosen by a sweep (``best_edits=<run dir>/best_edits.json``), the host of its
    model and the edit (any kind, carrying its positions); ``value=`` (and ``model=`` when
    several match) picks the entry.

    The edit must be the sweep's: a missing or changed neurons file, or other data.probes /
    stats.* than the sweep's, is an error unless ``rebuild_edits=true``; then the edit is
    rebuilt from the current statistics, ``entry["rebuilt"]`` says why and a line is printed.
    """
    from .models.host import load_model
    from .sweep.outputs import best_edit_problems, best_edit_spec, load_best_edit
    from .sweep.plan import model_label

    value = cfg.value if cfg.value is not None else cfg.edit.value
    entry = load_best_edit(cfg.best_edits, value=check_value(value) if value else None,
                           model=model_label(OmegaConf.to_container(cfg.model)),
                           method=cfg.method)
    inputs_hash = stats_inputs_hash_of(cfg)
    problems = best_edit_problems(entry, inputs_hash)
    if problems and not cfg.rebuild_edits:  # said before the model loads
        raise ConfigError(f"best_edits: the {entry['model']}/{entry['value']}/"
                          f"{entry['method']} edit would not be the sweep's: "
                          f"{'; '.join(problems)}; restore them, or pass rebuild_edits=true "
                          "to rebuild it from the current statistics")
    host = load_model(OmegaConf.create(entry["model_config"]))
    spec = best_edit_spec(entry, stats=lambda: stats_from_config(cfg, host),
                          inputs_hash=inputs_hash, rebuild=cfg.rebuild_edits,
                          allow_other_model=cfg.edit.allow_other_model)
    entry.setdefault("rebuilt", None)
    if entry["rebuilt"]:
        log.warning("best_edits: the %s/%s/%s edit was REBUILT from the current statistics "
                    "(rebuild_edits=true): %s", entry["model"], entry["value"], entry["method"],
                    entry["rebuilt"])
    return entry, host, spec


def check_prompt_fits(host: ModelHost, prompt: str, max_new_tokens: int) -> None:
    """The templated prompt and the reply fit the model's context (``prompt``,
    ``max_new_tokens``), counted with the model's own tokenizer."""
    limit = getattr(getattr(host.model, "config", None), "max_position_embeddings", None)
    n = len(host.tokenizer(host.chat_prompt(prompt))["input_ids"])
    if limit and n + max_new_tokens > limit:
        raise ConfigError(f"prompt: {n} tokens (with the chat template) plus max_new_tokens="
                          f"{max_new_tokens} exceed {host.name}'s context of {limit} tokens; "
                          "shorten the prompt or lower max_new_tokens")


@TASKS.add("steer")
def steer(cfg: DictConfig, out: Path) -> None:
    """Greedy replies to ``prompt``, unedited and edited toward ``value``, side by side."""
    from .evaluation.scoring import greedy_generate
    from .neurons.selection import select_neurons

    if cfg.best_edits:
        entry, host, spec = best_edit(cfg)
        value, positions = entry["value"], spec.positions or "all"
    else:
        value = edit_value(cfg)
        host = host_from_config(cfg)
        check_prompt_fits(host, cfg.prompt, cfg.max_new_tokens)  # before the statistics
        stats = stats_from_config(cfg, host)
        nmap: NeuronMap = select_neurons(stats, value, **selection_kwargs(cfg))
        spec = config_edit(cfg, stats, nmap, value)
        positions = cfg.edit.positions
    if cfg.best_edits:
        check_prompt_fits(host, cfg.prompt, cfg.max_new_tokens)
    base, edited = (r[0] for r in greedy_generate(host, [host.chat_prompt(cfg.prompt)],
                                                    [None, spec], positions,
                                                    cfg.max_new_tokens))
    print(f"prompt: {cfg.prompt}\n")
    title = f"edited toward {value} ({spec.title()})"
    print(side_by_side(base, edited, ("unedited", title)))


def format_eval(rec: dict) -> str:
    """A readable table of one eval.json record: CSR per value, then every metric of the
    schema (:data:`neva_sweep.evaluation.metrics.METRICS`) the record has, a line per group, with
    its
    95% bootstrap interval where the record carries one."""
    from .evaluation.metrics import scalar_metrics

    lines = [f"{'value':<16}{'CSR base':>10}{'CSR edited':>12}{'dCSR':>9}"]
    target = rec["edit"]["value"] if rec.get("edit") else None
    for v in rec["csr_base"]:
        b, e = rec["csr_base"][v], rec["csr_edited"][v]
        mark = "  <- target" if v == target else ""
        lines.append(f"{v:<16}{b:>10.3f}{e:>12.3f}{e - b:>+9.3f}{mark}")
    groups: dict[str, list[str]] = {}
    ci = rec.get("ci") or {}
    for m in scalar_metrics():
        x = rec.get(m.name)
        if x is None:
            continue
        cell = f"{m.label} {m.format(x)}"
        lo_hi = ci.get(m.name)
        if isinstance(lo_hi, list | tuple) and len(lo_hi) == 2:
            cell += f" (95% CI {m.format(lo_hi[0])}..{m.format(lo_hi[1])})"
        groups.setdefault(m.group, []).append(cell)
    lines.append("")
    for cells in groups.values():  # one group per line, wrapped at 96 characters
        line = cells[0]
        for cell in cells[1:]:
            if len(line) + 3 + len(cell) > 96:
                lines.append(line)
                line = "  " + cell
            else:
                line += "   " + cell
        lines.append(line)
    return "\n".join(lines)


def evaluate_config(cfg: DictConfig, host: ModelHost | None = None) -> dict:
    """The eval.json record for the model and (optional) edit described by ``cfg``.

    The same numbers as ``python -m neva_sweep task=evaluate`` with the same overrides.
    """
    from .neurons.selection import select_neurons

    entry = None
    if cfg.best_edits:  # the edit a sweep chose
        entry, host, best = best_edit(cfg)
        value = entry["value"]
    else:
        host = host or host_from_config(cfg)
        value = cfg.value if cfg.value is not None else cfg.edit.value
        if value is not None:
            value = check_value(value)
    evaluator = evaluator_from_config(cfg, host)  # validates data and judge before work
    t0 = time.time()
    if value is not None:  # the judge's null sets the floor on NLR's denominator
        evaluator.null(stats_from_config(cfg, host), progress=cfg.progress)
    if entry is not None:
        rec = evaluator.evaluate_one(value, best, best.positions or "all")
        rec["edit"].update(method=entry["method"], params=entry["params"],
                           best_edits=str(cfg.best_edits), rebuilt=entry["rebuilt"])
        specs = [best]
    elif value is None:
        rec = evaluator.base_record()
        specs = None
    else:
        stats = stats_from_config(cfg, host)
        nmap = select_neurons(stats, value, **selection_kwargs(cfg))
        spec = config_edit(cfg, stats, nmap, value)
        rec = evaluator.evaluate_one(value, spec, cfg.edit.positions)
        rec["edit"].update(sparsity=float(cfg.edit.sparsity), score=cfg.edit.score,
                           polarity=cfg.edit.polarity,
                           layer_window=selection_kwargs(cfg)["layer_window"])
        specs = [spec]
    cap = cfg.capability
    if cap.lm_eval_tasks:
        from .evaluation.lm_eval_adapter import lm_eval_drop, lm_eval_scores

        kw = dict(include_path=cap.lm_eval_include, limit=cap.lm_eval_limit,
                  batch_size=cap.batch_size)
        base = lm_eval_scores(host, list(cap.lm_eval_tasks), **kw)
        rec["lm_eval_base"] = base
        if specs:  # any kind of edit, at its own positions
            edited = lm_eval_scores(host, list(cap.lm_eval_tasks), edit=specs, **kw)
            rec["lm_eval_edited"], rec["lm_eval_drop"] = edited, lm_eval_drop(base, edited)
    rec["model"] = host.name
    rec["duration_s"] = time.time() - t0
    return rec


@TASKS.add("evaluate")
def evaluate(cfg: DictConfig, out: Path) -> None:
    """Evaluate the base model or ``edit.*`` -> eval.json and a printed table."""
    rec = evaluate_config(cfg)
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval.json").write_text(json.dumps(rec, indent=2))
    print(format_eval(rec))
    log.info("wrote %s (%.1f s)", out / "eval.json", rec["duration_s"])


@TASKS.add("validate_judge")
def validate_judge(cfg: DictConfig, out: Path) -> None:
    """Is ``judge.*`` valid on ``model.*``? -> judge_validity.json and a printed table
    (value prompts detected, acquiescence ignored, random-neuron null)."""
    from .evaluation.judge_validity import format_validity, validate_judge

    host = host_from_config(cfg)
    evaluator = evaluator_from_config(cfg, host)  # validates data and judge before work
    stats = stats_from_config(cfg, host)
    rec = validate_judge(evaluator, stats, progress=cfg.progress)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "judge_validity.json"
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(rec, indent=2))
    tmp.replace(path)
    print(format_validity(rec))
    log.info("wrote %s (%.1f s)", path, rec["duration_s"])


@TASKS.add("sweep")
def sweep(cfg: DictConfig, out: Path, plan: SweepPlan | None = None) -> None:
    """Optuna studies per (model, value, method) on Ray replicas -> trials.csv, pareto.json,
    best_edits.json, optuna.db and W&B (see neva_sweep.sweep). ``plan``: the one the
    preflight built and checked (None: planned here)."""
    from .report import build_report
    from .sweep import run_sweep

    try:
        run_sweep(cfg, out, report=build_report, plan=plan)
    except KeyboardInterrupt:
        log.warning("sweep interrupted: trials in flight were marked FAIL; run the same "
                    "command (same run directory and search.storage) to resume")
        raise SystemExit(130) from None


@TASKS.add("report")
def report(cfg: DictConfig, out: Path) -> None:
    """A sweep's figures, tables and self-contained index.html -> <run_dir>/report/."""
    from .config import ConfigError
    from .report import build_report

    run_dir = Path(cfg.run_dir) if cfg.run_dir else out
    if not run_dir.is_dir():
        raise ConfigError(f"run_dir: no such directory {run_dir}; give a sweep's run directory "
                          "(run_dir=<the sweep's hydra.run.dir>)")
    storage = None
    if cfg.search.storage:  # as the sweep resolved it (journal://rel.log: in the run dir)
        from .sweep.plan import storage_url

        storage = storage_url(cfg.search, run_dir)
    log.info("wrote %s", build_report(run_dir, storage=storage, strict=True))


@TASKS.add("compare")
def compare(cfg: DictConfig, out: Path) -> None:
    """Several sweeps side by side (``run_dirs=[A,B,...]``) -> <hydra.run.dir>/report/
    (see neva_sweep.report.compare)."""
    from .report.compare import compare_runs

    log.info("wrote %s", compare_runs(list(cfg.run_dirs or []), out,
                                      judges=cfg.get("compare_judges")))


@TASKS.add("export")
def export(cfg: DictConfig, out: Path) -> None:
    """A sweep's chosen edit (``run_dir=``, ``value=``, ``method=``) as files usable without
    neva_sweep: ``format=hooks|weights|steering_vector`` (see neva_sweep.exporting)."""
    from .exporting import best_edits_path, export_edit

    cfg = OmegaConf.merge(cfg, {"best_edits": str(best_edits_path(cfg.run_dir))})
    entry, host, spec = best_edit(cfg)  # the edit task=steer best_edits=... would apply
    for path in export_edit(host, spec, entry, cfg.format, out):
        print(f"wrote {path}")


def user_errors() -> tuple[type[BaseException], ...]:
    """Errors whose message says what to fix: the CLI prints them as one line. Classes of
    modules not imported yet cannot have been raised, so they are not imported here (the
    error path stays as fast as the check that failed)."""
    from .config import ConfigError

    found: list[type[BaseException]] = [ConfigError, KeyError, OSError]
    for module, name in (("data", "DataError"), ("report.build", "ReportError"),
                         ("classifier", "EncoderNotInstalled"), ("sweep.run", "SweepFailed")):
        loaded = sys.modules.get(f"{__package__}.{module}")
        if loaded is not None:
            found.append(getattr(loaded, name))
    return tuple(found)


def run_cli(cfg: DictConfig, out: str | Path) -> None:
    """:func:`run` for ``python -m neva_sweep``: a user error is one line on stderr and exit
    status 2, a failed sweep (no COMPLETE trial in a study, or most of its trials failed)
    one line and exit status 1 (``HYDRA_FULL_ERROR=1`` re-raises either, with the full
    traceback)."""
    import os

    try:
        run(cfg, out)
    except Exception as e:
        # a KeyError (e.g. an unknown task) is told without user_errors(), which imports the
        # model stack: a mistyped task is answered at once
        storage = type(e).__name__ == "StorageInternalError"  # Optuna's: disk full, locked
        if not isinstance(e, KeyError) and not storage and not isinstance(e, user_errors()):
            raise
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        if storage:
            cause = str(e.__cause__ or e).strip().splitlines()
            msg = (f"search.storage: the storage refused a write ({cause[0] if cause else e}); "
                   "check the disk's free space, then run the same command to resume")
            e.exit_code = 1  # not a typo: the run failed
        print(f"error: {msg}\n(set HYDRA_FULL_ERROR=1 for the traceback)", file=sys.stderr)
        for handler in logging.getLogger().handlers:  # the run's log file tells it too
            if isinstance(handler, logging.FileHandler):
                handler.handle(log.makeRecord(log.name, logging.ERROR, __file__, 0,
                                              f"error: {msg}", None, None))
        raise SystemExit(getattr(e, "exit_code", 2)) from None


def run(cfg: DictConfig, out: str | Path = ".") -> None:
    """Run ``cfg.task`` with outputs under ``out``, after checking every key it reads
    (:mod:`neva_sweep.preflight`: no weights, statistics or Ray before that)."""
    task = TASKS[cfg.task]  # an unknown task names the valid ones, before any heavy import
    load_plugins(cfg.get("plugins") or [])  # the user's registrations, before any check
    from .preflight import preflight  # (imports the model stack)

    built = preflight(cfg, Path(out))  # task=sweep: its plan, not planned twice
    task(cfg, Path(out), **built)
