"""``build_report``: load -> figures -> tables -> index.html, into ``<run_dir>/report/``."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from .figures import make_figures
from .load import Run, load_run
from .page import write_html
from .tables import make_tables


class ReportError(RuntimeError):
    """The run cannot be reported faithfully (no trials, unreadable or disagreeing files)."""


def build_report(run_dir: str | Path, storage: str | None = None, strict: bool = False) -> Path:
    """Write ``<run_dir>/report/index.html`` with its figures (PNG + SVG) and CSV tables.

    Args:
        run_dir: a sweep's run directory (``trials.csv``, ``pareto.json``,
            ``best_edits.json``, ``.hydra/``, ...); missing files are reported in the page.
        storage: an Optuna storage URL to read the trials from instead of ``trials.csv``
            (default: the run's ``optuna.db`` when it exists; the storage is the source of
            truth).
        strict: raise :class:`ReportError` on problems that make the report wrong (no
            trials, an unreadable storage, a trials.csv that disagrees with the storage):
            before writing anything when there are no trials at all, after writing the page
            otherwise (the page lists the problems).

    Returns:
        The path of ``index.html``. ``report/figures`` and ``report/tables`` are rebuilt
        from scratch.

    Example::

        from neva_sweep.report import build_report
        page = build_report("outputs/my-sweep")   # open page in a browser
    """
    run = load_run(run_dir, storage)
    if strict and run.errors and not run.rows:
        raise ReportError(" ".join(run.errors))
    page = write_report(run, run.run_dir / "report")
    if strict and run.errors:
        raise ReportError(f"wrote {page}, but: " + " ".join(run.errors))
    return page


def write_report(run: Run, out: Path, **page: Any) -> Path:
    """Figures, tables and ``index.html`` of ``run`` under ``out`` (``figures/`` and
    ``tables/`` rebuilt from scratch); ``page``: :func:`~.html.write_html`'s keywords."""
    for old in (out / "figures", out / "tables"):  # no stale files from an earlier build
        if old.is_dir():
            shutil.rmtree(old)
    sections = make_figures(run, out / "figures")
    tables = make_tables(run, out / "tables")
    return write_html(run, sections, tables, out / "index.html", **page)
