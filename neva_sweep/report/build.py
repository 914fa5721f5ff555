"""``build_report``: load -> figures -> tables -> index.html, into ``<run_dir>/report/``."""

from __future__ import annotations

import shutil
from pathlib import Path

from .figures import make_figures
from .html import write_html
from .load import load_run
from .tables import make_tables


def build_report(run_dir: str | Path, storage: str | None = None) -> Path:
    """Write ``<run_dir>/report/index.html`` with its figures (PNG + SVG) and CSV tables.

    Args:
        run_dir: a sweep's run directory (``trials.csv``, ``pareto.json``,
            ``best_edits.json``, ``.hydra/``, ...); missing files are reported in the page.
        storage: an Optuna storage URL to read the trials from instead of ``trials.csv``.

    Returns:
        The path of ``index.html``. ``report/figures`` and ``report/tables`` are rebuilt
        from scratch.

    Example::

        from neva_sweep.report import build_report
        page = build_report("outputs/my-sweep")   # open page in a browser
    """
    run = load_run(run_dir, storage)
    out = run.run_dir / "report"
    for old in (out / "figures", out / "tables"):  # no stale files from an earlier build
        if old.is_dir():
            shutil.rmtree(old)
    sections = make_figures(run, out / "figures")
    tables = make_tables(run, out / "tables")
    return write_html(run, sections, tables, out / "index.html")
