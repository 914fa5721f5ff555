"""Experiment tracking for a sweep: W&B, or nothing (``logger=none``).

One W&B run per driver invocation, grouped by ``logger.group`` (default: the run
directory's name), so a resumed sweep shows up as a second run of the same group. One
run rather than one per study because every study shares the driver, and tens of
concurrent W&B runs cost more than the trials on a small machine. Inside the run:

- per trial: ``<model>/<value>/<method>/<metric>`` for the headline metrics of the schema
  (:data:`neva_sweep.evaluation.metrics.METRICS`: alignment, nlr, nglr, cwl, acquiescence,
  accuracy_drop, kl) and the parameters, plus ``trials/complete``, ``trials/pruned`` and
  ``trials/failed``;
  each study's charts use its trial number (``<study>/trial``) as their x axis
  (``define_metric``), so a resumed study continues its curves;
- at the end: the ``trials`` table (every trial of the studies, as in trials.csv), native
  W&B scatter plots per value (``scatter/<value>/alignment_vs_nlr`` and
  ``.../alignment_vs_kl`` over every model and method), a Pareto plot image per
  (model, method) (alignment vs NLR, Pareto-optimal trials ringed), the best edit of each
  study in the run summary, an artifact ``best-edits`` holding best_edits.json and the
  neuron map of every best edit, and an artifact ``report`` holding the HTML report.

The run's config is the resolved Hydra config.

Loggers are a registry, :data:`LOGGERS` (``logger.kind`` names one): a logger is a class
built as ``cls(cfg, run_dir, config)`` (``cfg``: ``logger.*``; ``config``: the run's
redacted config) with ``log_trial`` and ``finish``, and a static ``check(cfg)`` that
refuses its unusable settings before any work (the sweep's plan runs it). A plugin adds
one with ``LOGGERS.register("mlflow", MlflowLogger)``.

Mode ``offline`` (default) writes under ``<run dir>/wandb`` and needs no network;
``online`` reads WANDB_API_KEY from the environment (or the ``wandb login`` of the server
``WANDB_BASE_URL`` names); ``disabled`` logs nothing. ``$WANDB_MODE``, when set, wins over
``logger.mode``. ``logger.name`` and ``logger.tags`` name and tag the run. The key is never
printed or written.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from omegaconf import DictConfig

from ..config import ConfigError, group_options
from ..evaluation.metrics import all_metrics
from ..registry import Registry

TRIAL_METRICS = tuple(m.name for m in all_metrics() if m.headline)


class TrialOutcome(Protocol):
    """What a logger reads of a told trial (:class:`neva_sweep.sweep.scheduler.Outcome`;
    a protocol, so that the plan can import the loggers' checks without the scheduler)."""

    key: Any  # StudyKey: model, value, method
    number: int
    state: str  # COMPLETE | PRUNED | FAIL
    params: dict[str, Any]
    metrics: dict[str, Any] | None


class SweepLogger(Protocol):
    def log_trial(self, outcome: TrialOutcome) -> None: ...

    def finish(self, rows: list[dict], paths: dict[str, Path], exit_code: int) -> None: ...


LOGGERS: Registry[Callable[..., SweepLogger]] = Registry("logger")
"""``logger.kind`` -> a logger class: ``cls(cfg, run_dir, config)``, ``cls.check(cfg)``."""


class NullLogger:
    """``logger=none``: no tracker (trials.csv, pareto.json and best_edits.json are written
    anyway)."""

    def __init__(self, cfg: DictConfig | None = None, run_dir: Path | None = None,
                 config: dict[str, Any] | None = None):
        pass

    @staticmethod
    def check(cfg: DictConfig) -> None:
        """Nothing to check."""

    def log_trial(self, outcome: TrialOutcome) -> None:
        pass

    def finish(self, rows: list[dict], paths: dict[str, Path], exit_code: int) -> None:
        pass


WANDB_MODES = ("offline", "online", "disabled")


def wandb_mode(lg: DictConfig) -> str:
    """The W&B mode a sweep runs in: ``$WANDB_MODE`` when set (W&B's own convention, e.g.
    on a cluster that has no network), else ``logger.mode``; ``dryrun`` is W&B's old name
    of offline."""
    mode = os.environ.get("WANDB_MODE") or lg.mode
    return "offline" if mode == "dryrun" else str(mode)


def wandb_host() -> str:
    """The W&B server's host: ``$WANDB_BASE_URL``'s (a self-hosted server), else W&B's."""
    from urllib.parse import urlparse

    url = os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai"
    return urlparse(url if "://" in url else f"https://{url}").hostname or url


def _has_wandb_key() -> bool:
    """An API key in the environment, or a login (``wandb login`` writes ~/.netrc) for the
    server the run logs to."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    if not netrc.is_file():
        return False
    import netrc as netrc_lib

    try:
        return netrc_lib.netrc(str(netrc)).authenticators(wandb_host()) is not None
    except (netrc_lib.NetrcParseError, OSError):
        return wandb_host() in netrc.read_text(errors="ignore")


class WandbLogger:
    """See the module docstring."""

    @staticmethod
    def check(cfg: DictConfig) -> None:
        """The W&B mode (``$WANDB_MODE`` or ``logger.mode``), and a key for online runs."""
        mode = wandb_mode(cfg)
        where = "$WANDB_MODE" if os.environ.get("WANDB_MODE") else "logger.mode"
        if mode not in WANDB_MODES:
            raise ConfigError(f"{where}: {mode!r}; valid choices: {', '.join(WANDB_MODES)}")
        if mode == "online" and not _has_wandb_key():
            raise ConfigError(f"{where}: online needs a W&B API key for {wandb_host()}: export "
                              "WANDB_API_KEY (or run `wandb login`, with WANDB_BASE_URL for a "
                              "self-hosted server), or use logger=wandb_offline")

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
        self.counts = {"COMPLETE": 0, "PRUNED": 0, "FAIL": 0}
        self.studies: set[str] = set()  # prefixes whose step metric is defined

    def log_trial(self, outcome: TrialOutcome) -> None:
        self.counts[outcome.state] += 1
        prefix = f"{outcome.key.model}/{outcome.key.value}/{outcome.key.method}/"
        if prefix not in self.studies:  # the study's trial number is its charts' x axis
            self.run.define_metric(prefix + "trial", hidden=True)
            self.run.define_metric(prefix + "*", step_metric=prefix + "trial")
            self.studies.add(prefix)
        data: dict[str, Any] = {"trials/complete": self.counts["COMPLETE"],
                                "trials/pruned": self.counts["PRUNED"],
                                "trials/failed": self.counts["FAIL"],
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


LOGGERS.register("wandb", WandbLogger)
LOGGERS.register("none", NullLogger)


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


def check_logger(lg: DictConfig) -> None:
    """``logger.kind`` names a registered logger, whose own check then passes."""
    if lg.kind not in LOGGERS:
        presets = "|".join(group_options("logger"))
        raise ConfigError(f"logger.kind: unknown logger {lg.kind!r}; valid choices: "
                          f"{', '.join(LOGGERS.names())} (or pick a preset: logger={presets})")
    LOGGERS[lg.kind].check(lg)


def make_logger(cfg: DictConfig, run_dir: Path, config: dict[str, Any]) -> SweepLogger:
    """The logger ``logger.kind`` names (:data:`LOGGERS`), started for ``run_dir``."""
    return LOGGERS[cfg.kind](cfg, run_dir, config)
