"""``task=compare``: several sweeps' run directories -> one report, side by side.

    python -m neva_sweep task=compare 'run_dirs=[runs/default/smollm2_135m,runs/b]'

writes ``<hydra.run.dir>/report/index.html`` (default ``runs/compare/report/``). Each run
is read by :func:`~.load.load_run` and the runs are *merged* into one :class:`~.load.Run`
whose model labels are ``<run>/<model>`` (``<run>``: the fewest trailing parts of the run
directory's path that tell the runs apart), so the report's own figures and tables show
them side by side: Pareto fronts per value with one series per run, model and method
(``<run>/<model> · <method>``), leakage matrices, value profiles and optimisation history
per run and model, and chosen-edit, model-comparison and study tables whose first column
is ``run``.

Scores are comparable only under one judge. Runs whose ``judge.*`` or ``sweep.judge.*``
settings differ (each run's ``.hydra/config.yaml``, interpolations resolved where that needs
no Hydra) are refused, naming the runs and keys, unless ``+compare_judges=any`` is given;
the page then warns at the top. A run directory without trials is refused too. Each run's
trials come from its ``optuna.db`` when it has one, else its ``trials.csv``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from ..config import ConfigError
from .build import ReportError, write_report
from .load import Key, Run, feasible, is_complete, load_run

ANY = "any"  # +compare_judges=any: compare runs of different judges anyway
JUDGE_KEYS = ("judge", "sweep.judge")  # the judge settings the trials were scored with


def check_compare(run_dirs: Sequence[str | Path] | None, compare_judges: str | None) -> list[Path]:
    """``run_dirs`` as paths: at least two distinct existing directories; and
    ``compare_judges``: absent or ``any``. Raises :class:`ConfigError` naming the key."""
    if compare_judges not in (None, ANY):
        raise ConfigError(f"compare_judges: unknown value {compare_judges!r}; valid choices: "
                          f"{ANY} (+compare_judges={ANY})")
    if isinstance(run_dirs, str | Path):
        run_dirs = [run_dirs]
    dirs = [Path(d) for d in run_dirs or []]
    if len(dirs) < 2:
        raise ConfigError(f"run_dirs: task=compare needs two or more sweep run directories, "
                          f"got {len(dirs)}; e.g. 'run_dirs=[runs/a,runs/b]'")
    seen: set[Path] = set()
    for d in dirs:
        if not d.is_dir():
            raise ConfigError(f"run_dirs: no such directory {d}; give the sweeps' run "
                              "directories (their hydra.run.dir)")
        if d.resolve() in seen:
            raise ConfigError(f"run_dirs: {d} is given twice; give each run directory once")
        seen.add(d.resolve())
    return dirs


def run_names(dirs: Sequence[Path]) -> list[str]:
    """Short names that tell the runs apart: the fewest trailing path parts that differ.

    >>> run_names([Path("/runs/default/tiny_llama"), Path("/runs/smoke/tiny_llama")])
    ['default/tiny_llama', 'smoke/tiny_llama']
    """
    parts = [d.resolve().parts for d in dirs]  # distinct (check_compare)
    n = next(n for n in range(1, max(map(len, parts)) + 1)
             if len({p[-n:] for p in parts}) == len(parts))
    return ["/".join(p[-n:]) for p in parts]


def _leaves(node: Any, key: str) -> dict[str, Any]:
    """A nested config dict as dotted keys -> leaf values (an empty dict has none)."""
    if isinstance(node, dict):
        return {k: v for name, child in node.items()
                for k, v in _leaves(child, f"{key}.{name}").items()}
    return {key: node}


def judge_settings(run: Run) -> dict[str, Any] | None:
    """``judge.*`` and ``sweep.judge.*`` of the run's saved config as dotted keys -> values;
    None without a readable ``.hydra/config.yaml``. The saved config is already composed;
    interpolations that resolve without Hydra (``${judge.name}``, ``${oc.env:X}``) are
    resolved, the others compared as written.

    >>> judge_settings(Run(Path("."), config={"judge": {"name": "lexicon", "n": "${.m}",
    ...                                        "m": 3}, "sweep": {"judge": {}}}))
    {'judge.name': 'lexicon', 'judge.n': 3, 'judge.m': 3}
    """
    if run.config is None:
        return None
    cfg = OmegaConf.create(run.config)
    out = {}
    for root in JUDGE_KEYS:
        node: Any = run.config
        for part in root.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        for key, value in _leaves(node, root).items():
            if isinstance(value, str) and "${" in value:
                try:
                    value = OmegaConf.select(cfg, key)
                except Exception:  # a resolver of Hydra's, an unset variable: as written
                    pass
                if OmegaConf.is_config(value):
                    value = OmegaConf.to_container(value, resolve=True)
            out[key] = value
    return {k: v for k, v in out.items() if v is not None}  # null == absent


def _differ(key: str, values: Sequence[Any], names: Sequence[str]) -> str | None:
    """``"key (a: 1, b: 'x', c: unset)"`` when the runs' values differ, else None."""
    if all(v == values[0] for v in values):
        return None
    return f"{key} (" + ", ".join(f"{n}: {'unset' if v is None else repr(v)}"
                                  for n, v in zip(names, values)) + ")"


def judge_differences(runs: Sequence[Run], names: Sequence[str]) -> list[str]:
    """The judge settings on which the runs differ, one line each naming every run's value;
    a run whose judge is unknown (no readable .hydra/config.yaml) is a line too."""
    settings = [judge_settings(r) for r in runs]
    out = [f"{n}: no readable .hydra/config.yaml, so its judge is unknown"
           for n, s in zip(names, settings) if s is None]
    known = [(n, s) for n, s in zip(names, settings) if s is not None]
    keys = list(dict.fromkeys(k for _, s in known for k in s))  # first-seen order
    out += [line for k in keys if (line := _differ(k, [s.get(k) for _, s in known],
                                                   [n for n, _ in known]))]
    return out


def merge_runs(runs: Sequence[Run], names: Sequence[str], out: Path) -> Run:
    """One :class:`Run` with every run's studies, model labels ``<name>/<model>`` (unique
    keys); ``origins`` keeps (run name, model) for the tables' run column. Each trial keeps
    the feasibility of its own run's budgets."""
    merged = Run(out, source="; ".join(f"{n}: {r.source}" for n, r in zip(names, runs)))
    texts = []
    for name, run in zip(names, runs):
        def key(k: Key, name: str = name) -> Key:
            return f"{name}/{k[0]}", k[1], k[2]

        for r in run.rows:
            row = {**r, "model": f"{name}/{r['model']}"}
            if is_complete(r) and not isinstance(r.get("feasible"), bool):
                row["feasible"] = feasible(r, run.constraints)
            merged.rows.append(row)
        merged.fronts |= {key(k): v for k, v in run.fronts.items()}
        merged.chosen |= {key(k): {**e, "model": key(k)[0]} for k, e in run.chosen.items()}
        merged.no_edit |= {key(k): v for k, v in run.no_edit.items()}
        merged.base_csr |= {f"{name}/{m}": v for m, v in run.base_csr.items()}
        merged.neuron_maps += [replace(nm, title=f"{name}/{nm.title}")
                               for nm in run.neuron_maps]
        if run.param_studies is not None:  # None stays None: no run read a storage
            merged.param_studies = [*(merged.param_studies or []),
                                    *(replace(p, key=key(p.key)) for p in run.param_studies)]
        merged.origins |= {f"{name}/{m}": (name, m) for m in run.models}
        merged.missing += [f"{name}: {m}" for m in run.missing]
        merged.errors += [f"{name}: {e}" for e in run.errors]
        texts.append(f"# {name}: {run.run_dir / '.hydra' / 'config.yaml'}\n"
                     f"{run.config_text or '(none)'}")
    merged.config_text = "\n".join(texts)
    if not any(_search_differences(runs, names)):
        merged.objectives, merged.constraints = runs[0].objectives, runs[0].constraints
    return merged


def _search_differences(runs: Sequence[Run], names: Sequence[str]) -> list[str]:
    return [line for a in ("objectives", "constraints")
            if (line := _differ(f"search {a}", [getattr(r, a) for r in runs], names))]


def compare_runs(run_dirs: Sequence[str | Path], out: str | Path,
                 judges: str | None = None) -> Path:
    """Write ``<out>/report/index.html`` comparing the sweeps in ``run_dirs``.

    Args:
        run_dirs: two or more sweeps' run directories.
        out: where the report goes (``task=compare``: its hydra.run.dir).
        judges: None refuses runs whose judge settings differ; ``"any"`` compares them
            anyway and says so at the top of the page.

    Raises :class:`ConfigError` (naming ``run_dirs``) before writing anything: fewer than
    two directories, a missing one, one without trials, different judges; and, as
    ``task=report``, :class:`ReportError` after writing when a run's files are wrong.

    Example::

        from neva_sweep.report import compare_runs
        compare_runs(["runs/default/smollm2_135m", "runs/default/tiny_llama"], "runs/compare")
    """
    dirs = check_compare(run_dirs, judges)
    runs = [load_run(d) for d in dirs]
    for d, run in zip(dirs, runs):  # task=report's refusal, and an empty trials.csv too
        if not run.rows:
            raise ConfigError(f"run_dirs: {d} has no trials: "
                              + (" ".join(run.errors) or "its trials.csv is empty (no trial "
                                 "has finished yet)"))
    names = run_names(dirs)
    judge = judge_differences(runs, names)
    if judge and judges != ANY:
        raise ConfigError(f"run_dirs: the judges of {', '.join(names)} differ, so their scores "
                          f"are not on one scale: {'; '.join(judge)}; compare runs judged "
                          f"alike, or add +compare_judges={ANY} to compare them anyway")
    notices = [f"The runs' judges differ (+compare_judges={ANY}): their scores are not on "
               f"one scale, so compare them with care. {'; '.join(judge)}."] if judge else []
    search = _search_differences(runs, names)
    if search:
        notices.append("The runs' search settings differ: each run's fronts and feasibility "
                       f"are its own. {'; '.join(search)}.")
    out = Path(out)
    merged = merge_runs(runs, names, out)
    page = write_report(merged, out / "report", notices=notices,
                        title=f"neva_sweep comparison: {' vs '.join(names)}",
                        reproduce=_reproduce(dirs, out, judges))
    if merged.errors:
        raise ReportError(f"wrote {page}, but: " + " ".join(merged.errors))
    return page


def _reproduce(dirs: Sequence[Path], out: Path, judges: str | None) -> str:
    flag = [f"+compare_judges={judges}"] if judges else []
    keyword = f", judges={judges!r}" if judges else ""
    return "\n".join([
        "# regenerate this comparison",
        " ".join(["python -m neva_sweep task=compare",
                  f"'run_dirs=[{','.join(map(str, dirs))}]'", f"hydra.run.dir={out}", *flag]),
        "# from Python", "from neva_sweep.report import compare_runs",
        f"compare_runs({[str(d) for d in dirs]!r}, {str(out)!r}{keyword})"])
