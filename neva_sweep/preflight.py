"""Checks that run before any work: no model weight loaded, no statistic computed, no Ray.

``preflight(cfg, out)`` validates every key the task will read, so a typo costs seconds,
not the minutes of a model load and a statistics pass. What it checks:

- ``edit.*`` (value, sparsity, magnitude, rule, score, positions, gate, layer window),
  ``stats.gate_depth`` and ``max_new_tokens``, with layer windows checked against the
  model's layer count read from its config file (no weights);
- the data files configured under ``data.*`` (parsed; errors name file:line);
- ``best_edits=`` (readable JSON with an ``edits`` list);
- for ``task=export``: ``format``, ``run_dir`` (with a best_edits.json) and ``value`` /
  ``method`` picking one of its edits;
- for ``task=compare``: ``run_dirs`` (two or more distinct directories) and
  ``+compare_judges``;
- for sweeps: the whole plan (:func:`neva_sweep.sweep.plan.make_plan`: every sweep key,
  each model's placement, the layer windows of ``search.space`` against every model),
  built once and handed to the sweep, and the storage (driver importable, server
  reachable, an existing SQLite file really a database);
- ``model.tp_size``, ``model.dtype``, ``model.device``, ``model.device_map`` (not with
  ``model.tp_size`` > 1) and ``model.tp_load``
  (:func:`neva_sweep.models.host.check_placement`);
- the run directory is writable.

Each key has one check function, run once: a layer window is checked by
:func:`neva_sweep.config.check_layer_window` wherever it is given. Every error is a
:class:`~neva_sweep.config.ConfigError` whose message starts with the key (or file) to fix.
"""

from __future__ import annotations

import json
import math
import uuid
from contextlib import closing
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from .config import ConfigError
from .redact import redact_text

if TYPE_CHECKING:
    from .sweep.plan import SweepPlan

SQLITE_MAGIC = b"SQLite format 3\x00"
# Tasks that edit with edit.* when no best_edits= is given, and whether a value is needed.
EDIT_TASKS = {"identify": False, "steer": True, "evaluate": False}


def check_edit(cfg: DictConfig, model: dict[str, Any], need_value: bool) -> None:
    """``edit.*`` and ``value`` (the keys identify/steer/evaluate read). The plain checks run
    first, before the plug-in registries (torch) and the model's config are read."""
    from .values import VALUES

    e = cfg.edit
    value = cfg.value if cfg.value is not None else e.value
    if value is None and need_value:
        raise ConfigError("value: no value to steer toward; set value=<name>, one of "
                          + ", ".join(VALUES))
    if value is not None and value not in VALUES:
        raise ConfigError(f"value: unknown value {value!r}; valid choices: {', '.join(VALUES)}")
    if not (isinstance(e.sparsity, int | float) and 0 < e.sparsity < 1):
        raise ConfigError(f"edit.sparsity: must be in (0, 1) (a fraction of the model's MLP "
                          f"neurons, e.g. 0.002), got {e.sparsity}")
    if not math.isfinite(float(e.magnitude)):
        raise ConfigError(f"edit.magnitude: must be a finite number, got {e.magnitude}")
    from .config import GATES
    from .edits.neuron import POSITIONS, RULES
    from .neurons.selection import POLARITIES, SCORES

    for key, given, valid in (("edit.rule", e.rule, RULES.names()),
                              ("edit.score", e.score, SCORES.names()),
                              ("edit.polarity", e.polarity, POLARITIES),
                              ("edit.positions", e.positions, POSITIONS),
                              ("edit.gate", e.gate, GATES)):
        if given not in valid:
            raise ConfigError(f"{key}: unknown choice {given!r}; valid choices: "
                              f"{', '.join(valid)}")
    from .neurons.selection import SIGNED_SCORES

    if e.polarity == "both" and e.score not in SIGNED_SCORES:
        raise ConfigError(f"edit.polarity: both needs a signed score (edit.score: "
                          f"{', '.join(SIGNED_SCORES)}); {e.score!r} has no anti-specific side")
    if e.layer_window is not None:
        from .config import check_layer_window
        from .models.registry import model_n_layers

        check_layer_window("edit.layer_window", e.layer_window, model_n_layers(model),
                           str(model["name"]))


def check_stats(cfg: DictConfig) -> None:
    """``stats.gate_depth``, and gate texts in ``data.neutral`` when a gate is asked for
    (``edit.gate`` or, for sweeps, ``search.space.gates``)."""
    from .data import load_records, neutral_split

    depth = cfg.stats.gate_depth
    if not (isinstance(depth, int | float) and 0 <= depth <= 1):
        raise ConfigError(f"stats.gate_depth: must be in [0, 1] (the gate probe's block as a "
                          f"fraction of the model's depth, e.g. 0.5), got {depth}")
    key, wanted = (("search.space.gates", cfg.search.space.gates) if cfg.task == "sweep"
                   else ("edit.gate", [cfg.edit.gate]))
    if any(g != "none" for g in wanted or []) and not neutral_split(
            load_records("neutral", cfg.data.neutral), "gate"):
        raise ConfigError(f"{key}: a gate needs neutral texts to train on, and data.neutral "
                          f"({cfg.data.neutral}) has no records with \"split\": \"gate\"; add "
                          "some, or use gate none")


def check_data_files(cfg: DictConfig) -> None:
    """Parse every data file given under ``data.*`` (the built-in ones are tested)."""
    from .data import DataError, load_probes, load_records

    for kind, path in OmegaConf.to_container(cfg.data).items():
        if path is None:
            continue
        if not Path(path).is_file():
            raise ConfigError(f"data.{kind}: no such file {path}")
        try:
            load_records(kind, path)
            if kind == "probes":  # every value needs identify probes (before any model work)
                load_probes(path, split="identify", neutral=False)
        except DataError as e:
            raise ConfigError(f"data.{kind}: {e}") from None


def check_split(cfg: DictConfig) -> None:
    """``split`` names an evaluation split that the scenarios and neutral texts have."""
    from .data import EVAL_SPLITS, load_records, split_rows

    if cfg.split not in EVAL_SPLITS:
        raise ConfigError(f"split: must be one of {', '.join(EVAL_SPLITS)}; got {cfg.split!r}")
    for kind in ("scenarios", "neutral"):
        if not split_rows(load_records(kind, cfg.data[kind]), cfg.split):
            raise ConfigError(f"split={cfg.split}: data.{kind} has no records of that split "
                              f"(\"split\": \"{cfg.split}\"; absent = search)")


def check_best_edits(path: str) -> None:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"best_edits: no such file {p}; give a sweep's best_edits.json")
    try:
        doc = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"best_edits: {p} is not valid JSON ({e}); give the best_edits.json "
                          "a sweep wrote") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("edits"), list):
        raise ConfigError(f"best_edits: {p} has no 'edits' list; give the best_edits.json a "
                          "sweep wrote")


def check_writable(key: str, path: Path) -> None:
    """``path`` can be created and written (a probe file is written and removed)."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-probe-{uuid.uuid4().hex}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"{key}: cannot write to {path} ({e.strerror or e}); choose a "
                          "writable directory") from None


def check_storage(url: str) -> None:
    """An existing SQLite file is a database; other URLs: driver importable, server up."""
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///"))
        if not path.parent.is_dir():
            raise ConfigError(f"search.storage: the directory of {path} does not exist; "
                              "create it or point search.storage elsewhere")
        if path.is_file() and path.stat().st_size > 0:
            with path.open("rb") as f:
                if f.read(len(SQLITE_MAGIC)) != SQLITE_MAGIC:
                    raise ConfigError(f"search.storage: {path} is not an SQLite database "
                                      "(corrupt or another file); move it aside to start "
                                      "afresh, or point search.storage elsewhere")
            problem = sqlite_problem(path)
            if problem:
                raise ConfigError(f"search.storage: {path} is damaged ({problem}); restore it "
                                  "from a copy, or move it aside to start afresh")
        return
    if url.startswith("journal:"):  # Optuna would create a missing directory silently
        path = Path(url.removeprefix("journal://"))
        if not path.parent.is_dir():
            raise ConfigError(f"search.storage: the directory of {path} does not exist; "
                              "create it or point search.storage elsewhere")
        return  # the journal file itself is opened (and checked) by the studies
    if "://" not in url:
        return
    from sqlalchemy import create_engine, text
    from sqlalchemy.exc import NoSuchModuleError

    try:
        engine = create_engine(url, connect_args=_connect_timeout(url))
    except ModuleNotFoundError as e:
        raise ConfigError(f"search.storage: the database driver for {url.split('://')[0]!r} "
                          f"is not installed ({e.name}); pip install it (e.g. psycopg2-binary "
                          "for postgresql, pymysql for mysql+pymysql)") from None
    except NoSuchModuleError:
        raise ConfigError(f"search.storage: unknown storage scheme {url.split('://')[0]!r}; "
                          "valid: sqlite:///path, journal:///path, or a database URL "
                          "(postgresql://..., mysql+pymysql://...)") from None
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        # the driver's message may repeat the URL: both masked like every shareable copy
        raise ConfigError(f"search.storage: cannot connect to {redact_text(url)}: "
                          f"{redact_text(first)}") from None
    finally:
        engine.dispose()


def sqlite_problem(path: Path) -> str | None:
    """Why an SQLite file cannot be read (truncated, malformed), or None: its own
    ``PRAGMA quick_check``, read-only (a file in use by nobody is only read)."""
    import sqlite3

    try:
        with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)) as db:
            rows = db.execute("PRAGMA quick_check").fetchall()
    except sqlite3.Error as e:
        return str(e).splitlines()[0] if str(e) else type(e).__name__
    result = rows[0][0] if rows else "no result"
    return None if result == "ok" else str(result).splitlines()[0]


def _connect_timeout(url: str) -> dict:
    return {"connect_timeout": 10} if url.startswith(("postgresql", "mysql")) else {}


def preflight(cfg: DictConfig, out: Path) -> dict[str, Any]:
    """Validate what ``cfg.task`` will read; raise :class:`ConfigError` before any work.

    Returns what the checks built that the task needs, as keyword arguments of the task
    (``task=sweep``: ``{"plan": SweepPlan}``, so that the sweep is planned once); ``{}``
    for the other tasks.
    """
    task = cfg.task
    if task == "report":
        return {}  # reads an existing run; checked by the report task itself
    if task == "compare":  # reads existing runs: their trials and judges by the task itself
        from .report.compare import check_compare

        check_compare(cfg.run_dirs, cfg.get("compare_judges"))
        check_writable("hydra.run.dir", out)
        return {}
    if task == "sweep":
        return {"plan": preflight_sweep(cfg, out)}
    if task == "export":
        preflight_export(cfg, out)
        return {}
    from .models.host import check_placement

    check_data_files(cfg)
    check_stats(cfg)
    check_split(cfg)
    check_placement(cfg.model)
    if cfg.best_edits:
        check_best_edits(cfg.best_edits)
    elif task in EDIT_TASKS:
        check_edit(cfg, OmegaConf.to_container(cfg.model, resolve=True), EDIT_TASKS[task])
    if cfg.max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens: must be >= 1, got {cfg.max_new_tokens}")
    if task == "steer" and not str(cfg.get("prompt") or "").strip():
        raise ConfigError("prompt: task=steer needs a prompt to answer (prompt=\"...\"); "
                          "got an empty one")
    check_writable("hydra.run.dir", out)
    return {}


def check_export(cfg: DictConfig) -> None:
    """``format``, ``run_dir`` (a directory with a readable best_edits.json) and ``value`` /
    ``method`` picking exactly one of its edits (the file lists them otherwise)."""
    from .exporting import FORMATS, best_edits_path
    from .sweep.outputs import load_best_edit
    from .sweep.plan import model_label
    from .values import VALUES

    if cfg.format not in FORMATS:
        raise ConfigError(f"format: unknown export format {cfg.format!r}; valid choices: "
                          f"{', '.join(FORMATS.names())}")
    if not cfg.run_dir:
        raise ConfigError("run_dir: task=export exports an edit a sweep chose; give the sweep's "
                          "run directory (run_dir=<the sweep's hydra.run.dir>)")
    run_dir = Path(cfg.run_dir)
    if not run_dir.is_dir():
        raise ConfigError(f"run_dir: no such directory {run_dir}; give a sweep's run directory "
                          "(run_dir=<the sweep's hydra.run.dir>)")
    best = best_edits_path(run_dir)
    if not best.is_file():
        raise ConfigError(f"run_dir: {run_dir} has no best_edits.json (a sweep writes it there "
                          "once a study has a feasible trial); give a sweep's run directory")
    check_best_edits(str(best))
    value = cfg.value if cfg.value is not None else cfg.edit.value
    if value is not None and value not in VALUES:
        raise ConfigError(f"value: unknown value {value!r}; valid choices: {', '.join(VALUES)}")
    try:
        load_best_edit(best, value=value, method=cfg.method,
                       model=model_label(OmegaConf.to_container(cfg.model, resolve=True)))
    except KeyError as e:  # none or several match: the message lists the file's edits
        raise ConfigError(f"value, method: {str(e.args[0]).removeprefix('best_edits: ')}"
                          ) from None
    except ValueError as e:  # a malformed entry
        raise ConfigError(f"run_dir: {str(e).removeprefix('best_edits: ')}") from None


def preflight_export(cfg: DictConfig, out: Path) -> None:
    from .models.host import check_placement

    check_export(cfg)
    check_data_files(cfg)  # the edit may be rebuilt from statistics on these
    check_stats(cfg)
    check_placement(cfg.model)
    check_writable("hydra.run.dir", out)


def preflight_sweep(cfg: DictConfig, out: Path) -> SweepPlan:
    """The sweep's plan, built and checked once (:func:`~neva_sweep.sweep.plan.make_plan`:
    every sweep key, each model's placement and the layer windows against its layer
    count), then what the plan cannot see: data files, gate texts, the storage."""
    from .sweep.plan import make_plan

    check_writable("hydra.run.dir", out)
    plan = make_plan(cfg, out)
    check_data_files(cfg)
    check_stats(cfg)
    check_storage(plan.storage)
    return plan
