"""Stage 2 of the report: figures from a :class:`~neva_sweep.report.load.Run`, PNG + SVG each.

Pure matplotlib objects (no pyplot state), drawn under one rc context: readable font
sizes, the Okabe-Ito colour-blind-safe palette for series, ``cividis`` (sequential) and
``RdBu_r`` (diverging, centred on 0) for colour scales. Each section function returns a
:class:`Section` whose ``notes`` say what could not be drawn and why.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.colors import Normalize, TwoSlopeNorm
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator
from matplotlib.transforms import blended_transform_factory, offset_copy

from ..values import DISPLAY_NAMES, GROUPS, VALUES
from .load import Key, Run, feasible, is_complete, num, value_order
from .params import ParamStudy

OKABE_ITO = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#000000",
             "#F0E442")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "h")
SEQUENTIAL, DIVERGING = "cividis", "RdBu_r"
GROUP_STYLE = {  # label, colour, bracket level (hedonism's two groups sit on different levels)
    "openness_to_change": ("Openness to change", "#E69F00", 0),
    "self_enhancement": ("Self-enhancement", "#D55E00", 1),
    "conservation": ("Conservation", "#0072B2", 0),
    "self_transcendence": ("Self-transcendence", "#009E73", 1),
}
RC = {"font.size": 10, "axes.titlesize": 11, "axes.labelsize": 10, "legend.fontsize": 8.5,
      "xtick.labelsize": 9, "ytick.labelsize": 9, "figure.titlesize": 12,
      "svg.fonttype": "path", "svg.hashsalt": "neva_sweep", "axes.spines.top": False,
      "axes.spines.right": False}
DPI = 110
# Inches: a figure of one panel (a run of one value, model or method) keeps room for its
# title, legend and colour bar.
MIN_SIZE = (6.0, 3.2)
ALIGNMENT_LABEL = "alignment: ΔCSR of the target (judge score, 0–1)"
NLR_LABEL = "NLR: mean leakage / alignment (ratio)"
DROP_LABEL = "accuracy drop (fraction of MC questions)"


@dataclass
class Plot:
    name: str  # file stem under figures/
    title: str
    caption: str
    png: Path
    svg: Path


@dataclass
class Section:
    id: str
    title: str
    intro: str
    plots: list[Plot] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# Section id -> (title, introduction).
SECTION_TEXT: dict[str, tuple[str, str]] = {
    "pareto": ("Pareto fronts: alignment vs leakage",
               "Per target value: every trial (grey), each study's Pareto front (line, one "
               "series per model and method; points coloured by accuracy drop) and the chosen "
               "edit (star). Up and left is better."),
    "leakage": ("Leakage matrices",
               "Rows: the target value of each chosen edit; columns: every value, in circumplex "
               "order; cell: ΔCSR (edited − unedited; grey = unknown). The colour scale follows "
               "the leakage, so the target cells (outlined) saturate. Brackets mark the "
               "higher-order groups: leakage that stays near the target and inside its groups "
               "is the benign kind."),
    "profiles": ("Value profiles",
               "CSR of all ten values around the circumplex (pyvalues' radar axes): the unedited "
               "model (dashed) against each value's chosen edit (filled); the target's label is "
               "in colour."),
    "neurons": ("Neuron maps",
               "Left: selected neurons per layer for each value. Right: Jaccard overlap between "
               "the values' neuron sets, in circumplex order with the higher-order groups "
               "marked."),
    "params": ("Parameter importances",
               "Per Optuna study with at least 4 COMPLETE trials and two searched parameters "
               "that varied: left, each parameter's share of the variance of the first "
               "objective (fANOVA, seeded: the same trials give the same bars); right, every "
               "COMPLETE trial as a line through its parameters (most important first; log "
               "scales where the search was) and that objective, coloured by it, the best "
               "trials drawn on top. Read from the run's Optuna storage, which alone keeps "
               "the search space."),
    "history": ("Optimisation history",
               "Per study: each COMPLETE trial's alignment (dots), the best so far (steps) and "
               "failed trials (× on the bottom edge), against the trial number."),
}


def _section(sid: str) -> Section:
    title, intro = SECTION_TEXT[sid]
    return Section(sid, title, intro)


def _done(sec: Section, has_data: bool, what: str) -> Section:
    """``sec``, with a note when there was nothing to plot."""
    if not has_data:
        sec.notes.append(f"no {what}: nothing to plot.")
    return sec


def _size(width: float, height: float) -> tuple[float, float]:
    """A figure size (inches) no smaller than :data:`MIN_SIZE`.

    >>> _size(3.5, 2.4)
    (6.0, 3.2)
    """
    return max(width, MIN_SIZE[0]), max(height, MIN_SIZE[1])


def _save(fig: Figure, out: Path, name: str, title: str, caption: str) -> Plot:
    out.mkdir(parents=True, exist_ok=True)
    png, svg = out / f"{name}.png", out / f"{name}.svg"
    # "tight": the files hold every artist, even a title longer than the figure is wide
    # (a long model name); within the figure it only trims the margin to 0.05 inch.
    tight = {"bbox_inches": "tight", "pad_inches": 0.05}
    fig.savefig(png, dpi=DPI, metadata={"Software": None}, **tight)
    fig.set_layout_engine("none")  # keep the layout just computed: the SVG needs no second pass
    fig.savefig(svg, metadata={"Date": None, "Creator": None}, **tight)  # reproducible files
    return Plot(name, title, caption, png, svg)


def _save_study(fig: Figure, out: Path, kind: str, title: str, model: str, method: str,
                caption: str) -> Plot:
    """:func:`_save` for a figure of one (model, method): file ``<kind>_<model>_<method>``."""
    return _save(fig, out, f"{kind}_{_safe(model)}_{_safe(method)}",
                 f"{title}: {model} / {method}", caption)


def _safe(s: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in s)


def _series(run: Run) -> dict[tuple[str, str], tuple[str, str, str]]:
    """(model, method) -> (label, colour, marker); the label names the model only if several."""
    many = len(run.models) > 1
    out = {}
    for i, (model, method) in enumerate((m, k) for m in run.models for k in run.methods):
        label = f"{model} · {method}" if many else method
        out[model, method] = (label, OKABE_ITO[i % len(OKABE_ITO)],
                              MARKERS[run.methods.index(method) % len(MARKERS)])
    return out


def _grid(n: int, ncols: int = 5) -> tuple[int, int]:
    cols = max(1, min(n, ncols))
    return math.ceil(n / cols), cols


def mark_groups(ax, order: list[str], axis: str) -> None:
    """Brackets naming the higher-order groups beside a matrix laid out in ``order``."""
    for group, members in GROUPS.items():
        pos = [i for i, v in enumerate(order) if v in members]
        if not pos:
            continue
        label, colour, level = GROUP_STYLE[group]
        lo, hi = min(pos) - 0.42, max(pos) + 0.42
        if axis == "x":  # above the matrix, 6 and 20 points up
            trans = offset_copy(blended_transform_factory(ax.transData, ax.transAxes),
                                ax.figure, y=6 + 14 * level, units="points")
            ax.plot([lo, hi], [1, 1], transform=trans, clip_on=False, color=colour, lw=3,
                    solid_capstyle="butt")
            ax.text((lo + hi) / 2, 1, label, transform=offset_copy(
                trans, ax.figure, y=2, units="points"), ha="center", va="bottom",
                fontsize=7.5, color=colour)
        else:  # right of the matrix, unlabelled: the colours match the top brackets
            trans = offset_copy(blended_transform_factory(ax.transAxes, ax.transData),
                                ax.figure, x=6 + 6 * level, units="points")
            ax.plot([1, 1], [lo, hi], transform=trans, clip_on=False, color=colour, lw=3,
                    solid_capstyle="butt")


def _annotate(ax, m: np.ndarray, fmt: str, norm) -> None:
    for (i, j), x in np.ndenumerate(m):
        if np.isfinite(x):
            dark = abs(norm(x) - 0.5) > 0.3 if isinstance(norm, TwoSlopeNorm) else norm(x) < 0.6
            ax.text(j, i, format(x, fmt), ha="center", va="center", fontsize=7,
                    color="white" if dark else "black")


def mc_off(run: Run) -> bool:
    """Whether the run's config switched multiple-choice accuracy off for the trials
    (``sweep.capability.mc_limit: 0``, as the presets do on CPUs): no accuracy_drop then
    is the design, not something missing."""
    cfg = run.config or {}
    trial = ((cfg.get("sweep") or {}).get("capability") or {}).get("mc_limit")
    return (trial if trial is not None else (cfg.get("capability") or {}).get("mc_limit")) == 0


# -- Pareto fronts --------------------------------------------------------------------------------
def pareto_section(run: Run, out: Path) -> Section:
    sec = _section("pareto")
    drops = [d for r in run.rows if (d := num(r.get("accuracy_drop"))) is not None]
    budget = num(run.constraints.get("max_accuracy_drop"))
    norm = Normalize(min([0.0, *drops]), max([1e-3, *drops, *([budget] if budget else [])]))
    if run.rows and not drops and not mc_off(run):
        sec.notes.append("no accuracy_drop values: front points are not coloured.")
    series = _series(run)
    for value in run.values:
        keys = [k for k in run.keys() if k[1] == value]
        rows = [r for k in keys for r in run.trials(k) if is_complete(r)
                and num(r.get("alignment")) is not None and num(r.get("nlr")) is not None]
        if not rows:
            sec.notes.append(f"{value}: no COMPLETE trial with alignment and NLR.")
            continue
        with matplotlib.rc_context(RC):
            fig = Figure(figsize=(6.6, 4.6), layout="constrained")
            ax = fig.add_subplot()
            _pareto_axes(ax, run, keys, rows, series, norm)
            fig.colorbar(matplotlib.cm.ScalarMappable(norm, SEQUENTIAL), ax=ax, label=DROP_LABEL)
            ax.set_title(f"{DISPLAY_NAMES.get(value, value)}: {len(rows)} complete trials")
            sec.plots.append(_save(fig, out, f"pareto_{_safe(value)}",
                                   f"Pareto front: {DISPLAY_NAMES.get(value, value)}",
                                   "Alignment (ΔCSR of the target) against NLR."))
    return _done(sec, bool(run.values), "studies")


def _pareto_axes(ax, run: Run, keys: list[Key], rows: list[dict], series, norm) -> None:
    ok = [r for r in rows if feasible(r, run.constraints)]
    bad = [r for r in rows if not feasible(r, run.constraints)]
    ax.scatter([r["nlr"] for r in ok], [r["alignment"] for r in ok], s=14, color="#BBBBBB",
               label="trials", zorder=1)
    if bad:
        ax.scatter([r["nlr"] for r in bad], [r["alignment"] for r in bad], s=18, marker="x",
                   color="#999999", label="over the budgets", zorder=1)
    for key in keys:
        label, colour, marker = series[key[0], key[2]]
        numbers = set(run.fronts.get(key, []))
        front = sorted((r for r in rows if r["trial"] in numbers
                        and (r["model"], r["value"], r["method"]) == key), key=lambda r: r["nlr"])
        if front:
            x, y = [r["nlr"] for r in front], [r["alignment"] for r in front]
            drop = [num(r.get("accuracy_drop")) for r in front]
            ax.plot(x, y, color=colour, lw=1.6, zorder=2)
            face = [matplotlib.colormaps[SEQUENTIAL](norm(d)) if d is not None else "white"
                    for d in drop]
            ax.scatter(x, y, s=55, marker=marker, c=face, edgecolors=colour, linewidths=1.6,
                       zorder=3)
            ax.plot([], [], color=colour, marker=marker, mfc="white", label=f"{label} front")
        best = run.chosen.get(key)
        if best and num(best.get("nlr")) is not None and num(best.get("alignment")) is not None:
            ax.scatter([best["nlr"]], [best["alignment"]], s=330, marker="*", facecolors="none",
                       edgecolors=colour, linewidths=2.0, zorder=4)
    ax.scatter([], [], s=200, marker="*", facecolors="none", edgecolors="black",
               label="chosen edit")
    if max(r["nlr"] for r in rows) > 20:  # NLR explodes when alignment <= eps
        ax.set_xscale("symlog", linthresh=1.0)
    ax.axhline(0, color="#888888", lw=0.8, zorder=0)
    ax.set_xlabel(NLR_LABEL)
    ax.set_ylabel(ALIGNMENT_LABEL)
    ax.legend(loc="best", frameon=False)


# -- leakage matrices -----------------------------------------------------------------------------
def leakage_section(run: Run, out: Path) -> Section:
    sec = _section("leakage")
    for model in run.models:
        for method in run.methods:
            targets = [v for v in VALUES if (model, v, method) in run.chosen]
            if not targets:
                continue
            m = np.array([[np.nan if d is None else d for d in
                           run.dcsr(model, run.chosen[model, t, method]["csr_edited"]).values()]
                          for t in targets])  # (targets, V)
            if not np.isfinite(m).any():
                sec.notes.append(f"{model}/{method}: no ΔCSR (no csr_<value> columns or "
                                 "unknown unedited CSR).")
                continue
            sec.plots.append(_leakage_plot(m, targets, model, method, len(run.models) > 1, out))
    return _done(sec, bool(sec.plots or sec.notes), "chosen edits")


def _leakage_plot(m: np.ndarray, targets: list[str], model: str, method: str, many: bool,
                  out: Path) -> Plot:
    off = m.copy()
    off[np.arange(len(targets)), [VALUES.index(t) for t in targets]] = np.nan
    # The scale follows the leakage (off-target cells); the target cells are clipped.
    lim = max(0.01, float(np.nanmax(np.abs(off))) if np.isfinite(off).any() else 0.0)
    norm = TwoSlopeNorm(0.0, -lim, lim)
    with matplotlib.rc_context(RC):
        fig = Figure(figsize=_size(8.2, 1.9 + 0.48 * len(targets)), layout="constrained")
        ax = fig.add_subplot()
        cmap = matplotlib.colormaps[DIVERGING].with_extremes(bad="#EEEEEE")
        im = ax.imshow(np.ma.masked_invalid(m), cmap=cmap, norm=norm, aspect="auto")
        _annotate(ax, m, "+.2f" if lim >= 0.05 else "+.3f", norm)
        for i, t in enumerate(targets):  # outline the target's own cell
            j = VALUES.index(t)
            ax.add_patch(matplotlib.patches.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False,
                                                      lw=1.8, edgecolor="black"))
        ax.set_xticks(range(len(VALUES)), [DISPLAY_NAMES[v] for v in VALUES], rotation=40,
                      ha="right")
        ax.set_yticks(range(len(targets)), [DISPLAY_NAMES[v] for v in targets])
        ax.set_xlabel("affected value (circumplex order)")
        ax.set_ylabel("target of the edit")
        mark_groups(ax, list(VALUES), "x")
        mark_groups(ax, targets, "y")
        fig.colorbar(im, ax=ax, label="ΔCSR (judge score)", pad=0.06, shrink=0.9,
                     extend="both")
        name = f"{model} / {method}" if many else method
        fig.suptitle(f"Leakage of the chosen edits: {name}")
    return _save_study(fig, out, "leakage", "Leakage matrix", model, method,
                       "ΔCSR of every value (columns) under each value's chosen edit (rows).")


# -- value profiles (radar) -----------------------------------------------------------------------
def radar_section(run: Run, out: Path) -> Section:
    sec = _section("profiles")
    series = _series(run)
    for model in run.models:
        for method in run.methods:
            targets = [v for v in VALUES if (model, v, method) in run.chosen]
            profiles = {t: run.chosen[model, t, method]["csr_edited"] for t in targets}
            profiles = {t: p for t, p in profiles.items() if any(x is not None for x in
                                                                 p.values())}
            if not profiles:
                if targets:
                    sec.notes.append(f"{model}/{method}: chosen edits carry no CSR per value.")
                continue
            colour = series[model, method][1]
            sec.plots.append(_radar_plot(profiles, run.base_csr.get(model, {}), colour,
                                         model, method, out))
    return _done(sec, bool(sec.plots or sec.notes), "chosen edits")


def _radar_plot(profiles: dict[str, dict], base: dict[str, float], colour: str, model: str,
                method: str, out: Path) -> Plot:
    from pyvalues.radarplot import radar_factory

    theta = radar_factory(len(VALUES))  # registers the "radar" projection (closed polygons)
    top = max([0.05, *(x for p in profiles.values() for x in p.values() if x is not None),
               *base.values()])
    top = math.ceil(top * 10) / 10
    rows, cols = _grid(len(profiles), 4)
    short = {v: DISPLAY_NAMES[v].replace("Self-direction", "Self-dir.") for v in VALUES}
    with matplotlib.rc_context(RC):
        fig = Figure(figsize=_size(3.5 * cols, 3.2 * rows + 0.7), layout="constrained")
        for i, (target, prof) in enumerate(profiles.items()):
            ax = fig.add_subplot(rows, cols, i + 1, projection="radar")
            ax.set_ylim(0, top)
            ax.set_rgrids([top / 2, top], fontsize=7)
            ax.set_rlabel_position(18)  # between the first two spokes
            ax.set_varlabels([short[v] for v in VALUES], top)
            for v, text in zip(VALUES, ax.texts):  # one label per spoke, in VALUES order
                text.set_fontsize(7.5)
                if v == target:
                    text.set(color=colour, fontweight="bold")
            b = [base.get(v, np.nan) for v in VALUES]
            e = [np.nan if prof.get(v) is None else prof[v] for v in VALUES]
            # markers too: a partly known base (NaN gaps) still shows its points
            ax.plot(theta, b, color="black", ls="--", lw=1.2, marker="o", ms=3)
            ax.plot(theta, e, color=colour, lw=1.6, marker="o", ms=3)
            ax.fill(theta, np.nan_to_num(e), color=colour, alpha=0.18)
            ax.set_title(f"→ {DISPLAY_NAMES[target]}", pad=18, fontsize=10)
        handles = [Line2D([], [], color="black", ls="--", label="unedited model"),
                   Line2D([], [], color=colour, lw=2, label="chosen edit")]
        fig.legend(handles=handles, loc="outside lower center", ncols=2, frameon=False)
        fig.suptitle(f"Value profiles (CSR per value): {model} / {method}")
    return _save_study(fig, out, "profiles", "Value profiles", model, method,
                       "CSR per value, unedited vs each value's chosen edit.")


# -- neuron maps ----------------------------------------------------------------------------------
def neurons_section(run: Run, out: Path) -> Section:
    sec = _section("neurons")
    for i, nm in enumerate(run.neuron_maps):
        values = sorted(nm.layer_counts, key=value_order)
        counts = np.array([nm.layer_counts[v] for v in values], dtype=float)  # (values, L)
        jac = np.array([[np.nan if a == b or (x := num(nm.jaccard.get(a, {}).get(b))) is None
                         else x for b in values] for a in values])  # (values, values)
        with matplotlib.rc_context(RC):
            fig = Figure(figsize=_size(12.5 if len(values) > 1 else 8.0,
                                       1.6 + 0.42 * len(values)), layout="constrained")
            if len(values) > 1:
                a1, a2 = fig.subplots(1, 2, width_ratios=[1.6, 1])
                _jaccard_axes(a2, values, jac)
            else:  # one value: no overlap to show, and a 1 × 1 matrix of the left-out diagonal
                a1 = fig.add_subplot()
            im = a1.imshow(counts, cmap=SEQUENTIAL, aspect="auto", interpolation="nearest")
            a1.set_yticks(range(len(values)), [DISPLAY_NAMES.get(v, v) for v in values])
            a1.set_xlabel("layer (index)")
            a1.xaxis.set_major_locator(MaxNLocator(integer=True))
            a1.set_title("selected neurons per layer")
            fig.colorbar(im, ax=a1, label="neurons (count)", pad=0.02)
            fig.suptitle(nm.title)
        one = "" if len(values) > 1 else " One value: no overlap between values to show."
        sec.plots.append(_save(fig, out, f"neurons_{i}_{_safe(nm.title.split(':')[0])}",
                               nm.title, f"Source: {nm.source}.{one}"))
    if not run.neuron_maps:
        sec.notes.append("no neuron maps in this run directory (neurons/<model>.json from "
                         "task=identify, or neuron files of the chosen edits).")
    return sec


def _jaccard_axes(ax, values: list[str], jac: np.ndarray) -> None:
    """The Jaccard overlap matrix ``jac`` (values, values) of the values' neuron sets."""
    top = float(np.nanmax(jac)) if np.isfinite(jac).any() else 1.0
    jnorm = Normalize(0.0, max(top, 0.01))  # the diagonal (always 1) is left out
    im = ax.imshow(jac, cmap=matplotlib.colormaps[SEQUENTIAL].with_extremes(bad="#EEEEEE"),
                   norm=jnorm)
    _annotate(ax, jac, ".2f", jnorm)
    labels = [DISPLAY_NAMES.get(v, v) for v in values]
    ax.set_xticks(range(len(values)), labels, rotation=40, ha="right")
    ax.set_yticks(range(len(values)), labels)
    mark_groups(ax, values, "x")
    ax.set_title("Jaccard overlap (diagonal left out)", pad=40)
    ax.figure.colorbar(im, ax=ax, label="Jaccard index (0–1)", pad=0.04)


# -- parameter importances and parallel coordinates ---------------------------------------------
def params_section(run: Run, out: Path) -> Section:
    sec = _section("params")
    if run.param_studies is None:
        sec.notes.append("the trials were not read from an Optuna storage (no optuna.db in the "
                         "run directory, or search.storage=): no search spaces to rank.")
        return sec
    for ps in run.param_studies:
        name = "/".join(ps.key)
        if ps.note:
            sec.notes.append(f"{name}: {ps.note}")
            continue
        sec.plots.append(_save(_params_figure(ps), out, f"params_{_safe('_'.join(ps.key))}",
                               f"Parameters: {name}",
                               f"Importance for {ps.objective} and the trials' parameters."))
    return _done(sec, bool(run.param_studies), "Optuna studies")


def _scaled(ps: ParamStudy, p: str) -> tuple[np.ndarray, list[tuple[float, str]]]:
    """Parameter ``p`` of every trial on [0, 1] (log scale where the search was; a
    categorical's choices evenly spaced), and the (position, label) ticks of its axis."""
    x = [params[p] for params, _ in ps.trials]
    if p in ps.choices:
        seen = [c for c in ps.choices[p] if c in x]  # the choices the trials took
        pos = np.array([seen.index(c) for c in x], dtype=float) / max(1, len(seen) - 1)
        return pos, [(i / max(1, len(seen) - 1), str(c)) for i, c in enumerate(seen)]
    v = np.asarray(x, dtype=float)
    t = np.log10(v) if p in ps.log and (v > 0).all() else v
    lo, hi = float(t.min()), float(t.max())
    pos = (t - lo) / (hi - lo) if hi > lo else np.full_like(t, 0.5)
    return pos, [(0.0, format(v.min(), ".3g")), (1.0, format(v.max(), ".3g"))]


def _params_figure(ps: ParamStudy) -> Figure:
    """Importance bars (left) and parallel coordinates of the trials (right) of one study."""
    y = np.array([value for _, value in ps.trials])  # (trials,)
    columns = [*ps.params, ps.objective]
    with matplotlib.rc_context(RC):
        fig = Figure(figsize=_size(3.2 + 1.5 * len(columns), 3.6), layout="constrained")
        a1, a2 = fig.subplots(1, 2, width_ratios=[1, 0.55 * len(columns)])
        share = [ps.importances.get(p, 0.0) for p in ps.params]
        a1.barh(range(len(ps.params)), share, color=OKABE_ITO[0])
        a1.set_yticks(range(len(ps.params)), ps.params)
        a1.invert_yaxis()  # the most important on top
        a1.set_xlim(0, 1)
        for i, x in enumerate(share):  # the share at the bar's end, inside a long bar
            inside = x > 0.8
            a1.text(x - 0.02 if inside else x + 0.02, i, f"{x:.2f}", va="center", fontsize=8,
                    ha="right" if inside else "left", color="white" if inside else "black")
        a1.set_xlabel(f"importance for {ps.objective}\n(fANOVA, share of variance)")
        scaled = [_scaled(ps, p) for p in ps.params]
        lo, hi = float(y.min()), float(y.max())
        scaled.append(((y - lo) / (hi - lo), [(0.0, format(lo, ".3g")), (1.0, format(hi, ".3g"))]))
        pos = np.stack([s for s, _ in scaled], axis=1)  # (trials, columns) on [0, 1]
        norm = Normalize(lo, hi)
        cmap = matplotlib.colormaps[SEQUENTIAL if ps.maximize else f"{SEQUENTIAL}_r"]
        # the best trials last, so that they are drawn on top
        for i in np.argsort(y if ps.maximize else -y):
            a2.plot(range(len(columns)), pos[i], color=cmap(norm(y[i])), lw=1.2, alpha=0.8)
        for j, (_, ticks) in enumerate(scaled):
            a2.axvline(j, color="#555555", lw=0.8, zorder=0)
            for at, label in ticks:
                a2.text(j + 0.04, at, label, fontsize=7.5, va="center", ha="left",
                        bbox={"fc": "white", "ec": "none", "alpha": 0.7, "pad": 0.5})
        labels = [f"{c} (log)" if c in ps.log else c for c in columns]
        a2.set_xticks(range(len(columns)), labels, rotation=20, ha="right")
        a2.set_xlim(-0.15, len(columns) - 0.6)
        a2.set_ylim(-0.06, 1.06)
        a2.set_yticks([])
        a2.spines[["left", "bottom"]].set_visible(False)
        a2.tick_params(axis="x", length=0)
        fig.colorbar(matplotlib.cm.ScalarMappable(norm, cmap), ax=a2, label=ps.objective,
                     pad=0.02)
        best = "highest" if ps.maximize else "lowest"
        fig.suptitle(f"{'/'.join(ps.key)}: {len(ps.trials)} COMPLETE trials "
                     f"({best} {ps.objective} drawn on top)")
    return fig


# -- optimisation history -------------------------------------------------------------------------
def history_section(run: Run, out: Path) -> Section:
    sec = _section("history")
    series = _series(run)
    for model in run.models:
        values = [v for v in run.values if any(k[0] == model and k[1] == v for k in run.keys())]
        if not any(run.trials(k) for k in run.keys() if k[0] == model):
            sec.notes.append(f"{model}: no trials.")
            continue
        rows_, cols = _grid(len(values))
        with matplotlib.rc_context(RC):
            width, height = _size(3.3 * cols, 2.8 * rows_ + 0.5)
            fig = Figure(figsize=(width, height), layout="constrained")
            axes = fig.subplots(rows_, cols, squeeze=False, sharey=True)
            for ax in axes.flat[len(values):]:
                ax.set_visible(False)
            for ax, value in zip(axes.flat, values):
                last = 0
                for method in run.methods:
                    rows = run.trials((model, value, method))
                    _history_axes(ax, rows, series[model, method])
                    last = max([last, *(r["trial"] for r in rows)])
                ax.set_xlim(-0.5, last + 0.5)  # blended-transform markers do not autoscale
                ax.xaxis.set_major_locator(MaxNLocator(integer=True))
                ax.set_title(DISPLAY_NAMES.get(value, value))
                ax.axhline(0, color="#888888", lw=0.8, zorder=0)
            for ax in axes[-1]:
                ax.set_xlabel("trial number")
            for ax in axes[:, 0]:
                ax.set_ylabel("alignment (ΔCSR)")
            handles = [Line2D([], [], color=c, marker=mk, label=lab) for (mo, _), (lab, c, mk)
                       in series.items() if mo == model]
            handles.append(Line2D([], [], color="#555555", marker="x", ls="", label="failed"))
            fig.legend(handles=handles, loc="outside lower center", frameon=False,
                       ncols=min(len(handles), max(2, int(width / 1.5))))  # rows, not clipping
            fig.suptitle(f"Optimisation history: {model}")
        sec.plots.append(_save(fig, out, f"history_{_safe(model)}",
                               f"Optimisation history: {model}",
                               "Best-so-far alignment per study against the trial number."))
    return _done(sec, bool(run.rows), "trials")


def _history_axes(ax, rows: list[dict], style: tuple[str, str, str]) -> None:
    _, colour, marker = style
    done = sorted((r for r in rows if is_complete(r) and num(r.get("alignment")) is not None),
                  key=lambda r: r["trial"])
    if done:
        x = [r["trial"] for r in done]
        y = [r["alignment"] for r in done]
        ax.scatter(x, y, s=14, color=colour, marker=marker, alpha=0.45, zorder=2)
        ax.step(x, np.maximum.accumulate(y), where="post", color=colour, lw=1.8, zorder=3)
    failed = [r["trial"] for r in rows if r.get("state") == "FAIL"]
    if failed:
        trans = blended_transform_factory(ax.transData, ax.transAxes)
        ax.scatter(failed, [0.03] * len(failed), transform=trans, marker="x", s=22,
                   color=colour, zorder=3)


SECTIONS: tuple[Callable[[Run, Path], Section], ...] = (
    pareto_section, leakage_section, radar_section, neurons_section, params_section,
    history_section)


def make_figures(run: Run, out: Path) -> list[Section]:
    """Every figure section, written under ``out`` (one failing figure does not stop the rest)."""
    sections = []
    for fn in SECTIONS:
        try:
            sections.append(fn(run, out))
        except Exception as e:  # a report with a hole beats no report
            name = fn.__name__.removesuffix("_section")
            sections.append(Section(name, name.capitalize(), "", notes=[
                f"this section failed: {type(e).__name__}: {e}"]))
    return sections


__all__ = ["Plot", "Section", "make_figures"]
