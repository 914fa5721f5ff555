"""The package's architecture, checked from its imports (lazy ones included): each stage
imports only the stages below it, no import cycle, no module named like the stdlib."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "neva_sweep"

# Bottom to top: a module may import its own stage and the ones listed before it.
STAGES: list[tuple[str, set[str]]] = [
    ("foundation", {"values", "registry", "files", "config", "redact", "overrides",
                    "userconf", "plugins", "export", "data", "conf"}),
    ("models", {"models"}),
    ("neurons", {"neurons"}),
    ("edits", {"edits"}),
    ("methods", {"methods"}),
    ("evaluation", {"evaluation"}),
    ("builders", {"builders"}),
    ("sweep", {"sweep"}),
    ("report", {"report"}),
    ("entry", {"cli", "preflight", "exporting", "__main__", ""}),
]


def modules() -> dict[str, Path]:
    """Dotted names inside the package ("" = its __init__) -> file."""
    out = {}
    for f in PACKAGE.rglob("*.py"):
        parts = list(f.relative_to(PACKAGE).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = f
    return out


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules ``name`` imports anywhere in its file."""
    is_pkg = path.name == "__init__.py"
    here = name.split(".") if name else []
    base = here if is_pkg else here[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                up = base[: len(base) - node.level + 1]
                target = ".".join(up + ([node.module] if node.module else []))
            elif node.module and node.module.split(".")[0] == "neva_sweep":
                target = node.module.partition(".")[2]
            else:
                continue
            for a in node.names:  # `from . import caa`: the submodule itself
                sub = f"{target}.{a.name}" if target else a.name
                found.add(sub if sub in known else target)
        elif isinstance(node, ast.Import):
            found |= {a.name.partition(".")[2] for a in node.names
                      if a.name.startswith("neva_sweep.")}
    # a submodule importing its own package's __init__ is not an edge
    return {t for t in found if t in known and t != name and not name.startswith(f"{t}.")}


def stage_of(name: str) -> int:
    top = name.split(".")[0]
    for i, (_, members) in enumerate(STAGES):
        if top in members:
            return i
    raise AssertionError(f"module neva_sweep.{name} belongs to no stage: add its package to "
                         "STAGES in tests/unit/test_layers.py")


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {m: imports(m, f, set(mods)) for m, f in mods.items()}


def test_every_stage_imports_only_the_stages_below() -> None:
    upward = sorted(f"neva_sweep.{m} ({STAGES[stage_of(m)][0]}) imports neva_sweep.{t} "
                    f"({STAGES[stage_of(t)][0]})"
                    for m, targets in graph().items() for t in targets
                    if stage_of(t) > stage_of(m))
    assert not upward, "\n".join(upward)


def test_no_import_cycles() -> None:
    edges = graph()
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    cycles = []

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for t in sorted(edges[m]):
            if state.get(t) == 1:
                cycles.append(" -> ".join([*path[path.index(t):], t]))
            elif t not in state:
                visit(t, [*path, t])
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m, [m])
    assert not cycles, "\n".join(cycles)


def test_no_module_is_named_like_the_standard_library() -> None:
    clash = sorted(str(f.relative_to(PACKAGE)) for f in PACKAGE.rglob("*.py")
                   if f.stem in sys.stdlib_module_names)
    assert not clash, f"rename these (they shadow the standard library): {clash}"


def test_the_check_sees_an_upward_import(tmp_path) -> None:
    """The graph is read right: sweep imports methods, and a relative import two levels
    up resolves to the package it names."""
    edges = graph()
    assert "methods" in edges["sweep.plan"] or "methods.base" in edges["sweep.plan"]
    assert stage_of("sweep.plan") > stage_of("methods.base")
    f = tmp_path / "mod.py"
    f.write_text("from ..report import build_report\n")
    assert imports("sweep.mod", f, {"report", "sweep.mod"}) == {"report"}
