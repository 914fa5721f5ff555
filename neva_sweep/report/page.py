"""Stage 4 of the report: one self-contained ``index.html``.

Figures are embedded as base64 PNG data URIs (the page works alone, offline, mailed or
opened from disk) and link to their PNG/SVG files beside it; tables link to their CSVs.
No scripts, fonts or stylesheets are loaded from anywhere, and text that contains a URL
(a storage URL in the config, an error message) is written with ``://`` escaped, so the
page holds no ``http://``/``https://`` at all.
"""

from __future__ import annotations

import base64
import html
import platform
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from .figures import Plot, Section
from .load import Run, is_complete
from .tables import Table, chosen_warnings, fmt

PACKAGES = ("neva_sweep", "torch", "transformers", "optuna", "ray", "deepspeed", "wandb",
            "hydra-core", "omegaconf", "pyvalues", "numpy", "matplotlib")
TEXT_COLUMNS = ("run", "model", "value", "method", "prompt", "unedited", "edited")
MAX_CELL = 800  # characters of a table cell on the page
# Tables shown after the figures (the others come first).
LATE_TABLES = ("samples", "studies")
CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif;
       margin: 0 auto; max-width: 1200px; padding: 0 24px 48px; color: #222; line-height: 1.45; }
h1 { font-size: 1.7em; margin: 24px 0 4px; } h2 { border-bottom: 1px solid #ccc; margin-top: 36px; }
nav a { margin-right: 14px; } .meta { color: #555; }
.missing { background: #fff6e0; border-left: 4px solid #E69F00; padding: 8px 16px; }
.note { color: #8a5a00; }
figure { display: inline-block; margin: 10px 8px 18px 0; max-width: 100%; vertical-align: top; }
figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: 0.9em; color: #444; max-width: 760px; }
#pareto figure { max-width: 49%; }
.tablewrap { overflow-x: auto; }
table { border-collapse: collapse; font-size: 0.85em; margin: 8px 0; }
th, td { border: 1px solid #ddd; padding: 3px 7px; text-align: right; white-space: nowrap; }
th { background: #f2f2f2; position: sticky; top: 0; }
td.text, th.text { text-align: left; }
#samples td { vertical-align: top; }
#samples td:nth-last-child(-n+3) { white-space: pre-wrap; min-width: 14em; max-width: 34em; }
pre { background: #f6f6f6; padding: 10px; overflow-x: auto; font-size: 0.85em; }
"""


def esc(x: object) -> str:
    """HTML-escaped text in which no URL survives as a URL.

    >>> esc("<a> sqlite:///x.db")
    '&lt;a&gt; sqlite:&#47;&#47;/x.db'
    """
    return html.escape(str(x)).replace("://", ":&#47;&#47;")


def versions() -> dict[str, str]:
    # not platform.platform(): its first call runs `uname -p` in a subprocess
    out = {"python": platform.python_version(),
           "platform": f"{platform.system()}-{platform.release()}-{platform.machine()}"}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def _href(path: Path, root: Path) -> str:
    return html.escape(path.relative_to(root).as_posix(), quote=True)


def _plot(p: Plot, root: Path) -> str:
    data = base64.b64encode(p.png.read_bytes()).decode("ascii")
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{esc(p.title)}">'
            f"<figcaption><b>{esc(p.title)}.</b> {esc(p.caption)} "
            f'<a href="{_href(p.png, root)}">PNG</a> · <a href="{_href(p.svg, root)}">SVG</a>'
            "</figcaption></figure>")


def _notes(notes: list[str]) -> str:
    return "".join(f'<p class="note">{esc(n)}</p>' for n in notes)


def _table(t: Table, root: Path) -> str:
    shown = [c for c in t.columns if not c.endswith(("_ci_lo", "_ci_hi"))]
    idx = {c: i for i, c in enumerate(t.columns)}
    left = ' class="text"'
    head = "".join(f"<th{left if c in TEXT_COLUMNS else ''}>{esc(c)}</th>" for c in shown)
    body = []
    for row in t.rows:
        cells = []
        for c in shown:
            x = row[idx[c]]
            text = fmt(x)
            if len(text) > MAX_CELL:  # a reply: the CSV has it whole
                text = text[:MAX_CELL] + " …"
            if c in t.ci and row[idx[f"{c}_ci_lo"]] is not None:
                text += f" [{fmt(row[idx[f'{c}_ci_lo']])}, {fmt(row[idx[f'{c}_ci_hi']])}]"
            cells.append(f"<td{left if isinstance(x, str) else ''}>{esc(text)}</td>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    table = (f'<div class="tablewrap"><table><thead><tr>{head}</tr></thead>'
             f"<tbody>{''.join(body)}</tbody></table></div>") if t.rows else ""
    return (f'<section id="{t.id}"><h2>{esc(t.title)}</h2><p>{esc(t.intro)} '
            f'<a href="{_href(t.csv, root)}">CSV</a></p>{_notes(t.notes)}{table}</section>')


def _section(s: Section, root: Path) -> str:
    plots = "".join(_plot(p, root) for p in s.plots)
    return (f'<section id="{s.id}"><h2>{esc(s.title)}</h2><p>{esc(s.intro)}</p>'
            f"{_notes(s.notes)}{plots}</section>")


def _summary(run: Run) -> str:
    n = len(run.rows)
    done = sum(is_complete(r) for r in run.rows)
    failed = sum(r.get("state") == "FAIL" for r in run.rows)
    def count(k: int, what: str) -> str:
        return f"{k} {what}" if k == 1 else f"{k} {what}s"

    shape = " × ".join(count(len(x), w) for x, w in ((run.models, "model"),
                                                    (run.values, "value"),
                                                    (run.methods, "method")))
    return (f"{count(len(run.keys()), 'study').replace('studys', 'studies')} ({shape}), "
            f"{count(n, 'trial')}: {done} complete, {failed} failed, {n - done - failed} "
            f"other; {count(len(run.chosen), 'chosen edit')}. Trials from {run.source}.")


def _reproduce(run: Run) -> str:
    d = str(run.run_dir)
    lines = ["# regenerate this report", f"python -m neva_sweep task=report run_dir={d}"]
    if run.source.startswith("Optuna storage"):
        url = run.source.removeprefix("Optuna storage ")
        lines.append(f"python -m neva_sweep task=report run_dir={d} search.storage={url}")
    if run.overrides is not None:
        lines += ["# re-run (or resume) the sweep",
                  " ".join(["python -m neva_sweep", *run.overrides, f"hydra.run.dir={d}"])]
    lines += ["# from Python", "from neva_sweep.report import build_report",
              f"build_report({d!r})"]
    return "\n".join(lines)


def write_html(run: Run, sections: list[Section], tables: list[Table], path: Path, *,
               title: str | None = None, notices: Sequence[str] = (),
               reproduce: str | None = None) -> Path:
    """Write the report page to ``path`` (its figures and CSVs already lie beside it).

    ``title`` (default: from the run directory), ``notices`` (warnings about the whole
    page, above the chosen edits' ones) and ``reproduce`` (the commands that rebuild it)
    let ``task=compare`` (:mod:`neva_sweep.report.compare`) describe a merged run.
    """
    root = path.parent
    title = title or f"neva_sweep report: {run.run_dir.resolve().name}"
    reproduce = reproduce or _reproduce(run)
    missing = [*run.missing, *(f"{s.title}: {n}" for s in sections for n in s.notes),
               *(f"{t.title}: {n}" for t in tables for n in t.notes)]
    warnings = chosen_warnings(run)
    nav = [("warnings", "Warnings")] if warnings or notices else []
    nav += [("missing", "What is missing")] if missing else []
    first = [t for t in tables if t.id not in LATE_TABLES]
    rest = [t for t in tables if t.id in LATE_TABLES]
    nav += [(t.id, t.title) for t in first] + [(s.id, s.title) for s in sections]
    nav += [(t.id, t.title) for t in rest] + [("config", "Config"), ("versions", "Versions"),
                                              ("reproduce", "Reproduce")]
    vers = "".join(f'<tr><td class="text">{esc(k)}</td><td class="text">{esc(v)}</td></tr>'
                   for k, v in versions().items())
    config = run.config_text if run.config_text is not None else "(no .hydra/config.yaml)"
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body>",
        f"<header><h1>{esc(title)}</h1>",
        f'<p class="meta">{esc(_summary(run))} Run directory: <code>{esc(run.run_dir)}'
        f"</code>. Generated {esc(now)}.</p>",
        "<nav>" + "".join(f'<a href="#{i}">{esc(t)}</a>' for i, t in nav) + "</nav></header>",
    ]
    if warnings or notices:
        chosen = ("<p>Chosen edits that are not evidence of steering toward their value:</p>"
                  "<ul>" + "".join(f"<li>{esc(w)}</li>" for w in warnings) + "</ul>"
                  if warnings else "")
        parts.append('<section id="warnings" class="missing"><h2>Warnings</h2>'
                     + "".join(f"<p><b>{esc(n)}</b></p>" for n in notices) + chosen
                     + "</section>")
    if missing:
        parts.append('<section id="missing" class="missing"><h2>What is missing</h2><ul>'
                     + "".join(f"<li>{esc(m)}</li>" for m in missing) + "</ul></section>")
    parts += [_table(t, root) for t in first]
    parts += [_section(s, root) for s in sections]
    parts += [_table(t, root) for t in rest]
    parts += [
        f'<section id="config"><h2>Config</h2><pre>{esc(config)}</pre></section>',
        f'<section id="versions"><h2>Versions</h2><p>Packages of the Python that built this '
        f"report ({esc(sys.executable)}).</p><table>{vers}</table></section>",
        f'<section id="reproduce"><h2>Reproduce</h2><pre>{esc(reproduce)}</pre>'
        "</section>", "</body></html>",
    ]
    path.write_text("\n".join(parts), encoding="utf-8")
    return path
