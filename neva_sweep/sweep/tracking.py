"""Experiment tracking for a sweep: W&B, or nothing (``logger=none``).

One W&B run per driver invocation, grouped by ``logger.group`` (default: the run
directory's name), so a resumed sweep shows up as a second run of the same group. One
run rather than one per study because every study shares the driver, and tens of
concurrent W&B runs cost more than the trials on a small machine. Inside the run:

- per trial: ``<model>/<value>/<method>/<metric>`` for the headline metrics of the schema
  (:data:`neva_sweep.evaluation.metrics.METRICS`: alignment, nlr, nglr, cwl, acquiescence,
  accuracy_drop, kl) and the parameters, plus ``trials/complete`` and ``trials/failed``;
  each study's charts use its trial number (``<study>/trial``) as their x axis
  (``define_metric``), so a resumed study continues its curves;
- at the end: the ``trials`` table (every trial of the studies, as in trials.csv), native
  W&B scatter plots per value (``scatter/<value>/alignment_vs_nlr`` and
  ``.../alignment_vs_kl`` over every model and method), a Pareto plot image per
  (model, method) (alignment vs NLR, Pareto-optimal trials ringed), the best edit of each
  study in the run summary, an artifact ``best-edits`` holding best_edits.json and the
  neuron map of every best edit, and an artifact ``report`` holding the HTML report.

The run's config is the resolved Hydra config.

Mode ``offline`` (default) writes under ``<run dir>/wandb`` and needs no network;
``online`` reads WANDB_API_KEY from the environment (or the ``wandb login`` of the server
``WANDB_BASE_URL`` names); ``disabled`` logs nothing. ``$WANDB_MODE``, when set, wins over
``logger.mode``. ``logger.name`` and ``logger.tags`` name and tag the run. The key is never
printed or written.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Protocol

from omegaconf import DictConfig

from ..evaluation.metrics import all_metrics
from .plan import wandb_mode
from .scheduler import Outcome

TRIAL_METRICS = tuple(m.name for m in all_metrics() if m.headline)


class SweepLogger(Protocol):
    def log_trial(self, outcome: Outcome) -> None: ...

    def finish(self, rows: list[dict], paths: dict[str, Path], exit_code: int) -> None: ...


class NullLogger:
    def log_trial(self, outcome: Outcome) -> None:
        pass

    def finish(self, rows: list[dict], paths: dict[str, Path], exit_code: int) -> None:
        pass


class WandbLogger:
    """See the module docstring."""

    def __init__(self, cfg: DictConfig, run_dir: Path, config: dict[str, Any]):
        import wandb

        self.wandb = wandb
        group = cfg.group or run_dir.resolve().name
        self.run = wandb.init(
            project=cfg.project, entity=cfg.entity, group=group, job_type="sweep",
            name=cfg.get("name"), tags=list(cfg.get("tags") or []) or None,
            dir=str(run_dir), mode=wandb_mode(cfg), config=config, reinit="create_new",
            # console off: tqdm owns the terminal; no system-metrics sampler on small machines.
            settings=wandb.Settings(console="off", x_disable_stats=True, silent=True),
        )
        self.complete = self.failed = 0
        self.studies: set[str] = set()  # prefixes whose step metric is defined

    def log_trial(self, outcome: Outcome) -> None:
        if outcome.state == "COMPLETE":
            self.complete += 1
        else:
            self.failed += 1
        prefix = f"{outcome.key.model}/{outcome.key.value}/{outcome.key.method}/"
        if prefix not in self.studies:  # the study's trial number is its charts' x axis
            self.run.define_metric(prefix + "trial", hidden=True)
            self.run.define_metric(prefix + "*", step_metric=prefix + "trial")
            self.studies.add(prefix)
        data: dict[str, Any] = {"trials/complete": self.complete, "trials/failed": self.failed,
                                prefix + "trial": outcome.number}
        if outcome.metrics is not None:
            data.update({prefix + k: outcome.metrics[k] for k in TRIAL_METRICS
                         if outcome.metrics.get(k) is not None})
            data.update({prefix + k: v for k, v in outcome.params.items()
                         if isinstance(v, int | float)})
        self.run.log(data)

    def finish(self, rows: list[dict], paths: dict[str, Path], exit_code: int) -> None:
        try:
            if rows:
                columns = list(dict.fromkeys(k for r in rows for k in r))
                table = self.wandb.Table(columns=columns,
                                         data=[[_cell(r.get(c)) for c in columns] for r in rows])
                self.run.log({"trials": table})
                self._log_scatters(rows)
            if paths.get("pareto") and paths["pareto"].is_file():
                self._log_pareto(rows, json.loads(paths["pareto"].read_text()))
            if paths.get("best_edits") and paths["best_edits"].is_file():
                self._log_best(paths["best_edits"])
            if paths.get("report") and paths["report"].is_file():
                art = self.wandb.Artifact("report", type="report",
                                          description="the sweep's HTML report")
                art.add_dir(str(paths["report"].parent))
                self.run.log_artifact(art)
        finally:
            self.run.finish(exit_code=exit_code)

    def _log_scatters(self, rows: list[dict]) -> None:
        """Native scatter plots per value: alignment against NLR and against KL."""
        cols = ["model", "method", "trial", "alignment", "nlr", "kl"]
        for value in sorted({r["value"] for r in rows}):
            data = [[r.get(c) for c in cols] for r in rows if r["value"] == value
                    and r["state"] == "COMPLETE" and r.get("alignment") is not None]
            if not data:
                continue
            table = self.wandb.Table(columns=cols, data=data)
            for x in ("nlr", "kl"):
                if all(d[cols.index(x)] is None for d in data):
                    continue
                plot = self.wandb.plot.scatter(table, x, "alignment",
                                               title=f"{value}: alignment vs {x.upper()}")
                self.run.log({f"scatter/{value}/alignment_vs_{x}": plot})

    def _log_pareto(self, rows: list[dict], pareto: dict) -> None:
        on_front = {(s["study"], t["trial"]) for s in pareto["studies"] for t in s["pareto"]}
        for model, method in sorted({(r["model"], r["method"]) for r in rows}):
            mine = [r for r in rows if r["model"] == model and r["method"] == method
                    and r["state"] == "COMPLETE"]
            if mine:
                fig = pareto_figure(mine, on_front, f"{model} / {method}")
                self.run.log({f"pareto/{model}/{method}": self.wandb.Image(fig)})

    def _log_best(self, path: Path) -> None:
        best = json.loads(path.read_text())
        for e in best["edits"]:
            key = f"best/{e['model']}/{e['value']}/{e['method']}"
            for k in TRIAL_METRICS:
                self.run.summary[f"{key}/{k}"] = e["metrics"].get(k)
        art = self.wandb.Artifact("best-edits", type="neuron_maps",
                                  description="best_edits.json and each best edit's neurons")
        art.add_file(str(path))
        maps = path.parent / "best_edits"
        if maps.is_dir():
            art.add_dir(str(maps), name="best_edits")
        self.run.log_artifact(art)


def _cell(x: Any) -> Any:
    return json.dumps(x) if isinstance(x, dict | list) else x


def pareto_figure(rows: list[dict], on_front: set[tuple[str, int]], title: str):
    """Alignment vs NLR of COMPLETE trials, one colour per value, Pareto trials ringed."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5), dpi=100)
    ax = fig.add_subplot()
    values = sorted({r["value"] for r in rows})
    for i, v in enumerate(values):
        pts = [r for r in rows if r["value"] == v]
        ax.scatter([r["nlr"] for r in pts], [r["alignment"] for r in pts], s=18,
                   color=f"C{i % 10}", label=v, alpha=0.8)
        front = [r for r in pts if (r["study"], r["trial"]) in on_front]
        ax.scatter([r["nlr"] for r in front], [r["alignment"] for r in front], s=70,
                   facecolors="none", edgecolors=f"C{i % 10}", linewidths=1.5)
    ax.set_xlabel("NLR (normalised leakage ratio)")
    ax.set_ylabel("alignment (dCSR of the target value)")
    ax.set_title(f"{title}: ringed = Pareto-optimal and feasible")
    ax.axhline(0, color="grey", lw=0.5)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return fig


def make_logger(cfg: DictConfig, run_dir: Path, config: dict[str, Any]) -> SweepLogger:
    if cfg.kind == "none":
        return NullLogger()
    return WandbLogger(cfg, run_dir, config)
