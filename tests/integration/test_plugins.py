"""plugins=[...]: a user's module registers a method without forking, imported on the
driver and on every Ray actor (a real sweep, run as users run it)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap

import pytest

from neva_sweep.config import ConfigError
from neva_sweep.neurons.selection import NeuronMap
from neva_sweep.plugins import load_plugins

PLUGIN = textwrap.dedent('''
    """A user's plugin: NeVA that always edits twice its configured sparsity."""
    import os
    from pathlib import Path

    from neva_sweep.methods import METHODS, NeVA

    # every process that imports the plugin leaves its pid (driver and actors)
    Path(os.environ["PLUGIN_MARKS"], str(os.getpid())).touch()


    class Wider(NeVA):
        name = "wider"

        def build(self, stats, value, params):
            return super().build(stats, value, {**params, "sparsity": 2 * params["sparsity"]})


    if "wider" not in METHODS:
        METHODS.register("wider", Wider())
''')


def test_a_module_that_cannot_be_imported_is_named():
    with pytest.raises(ConfigError, match=r"plugins: cannot import 'no_such_plugin_mod' "
                                          r"\(ModuleNotFoundError"):
        load_plugins(["no_such_plugin_mod"])


def test_plugin_method_runs_in_a_ray_sweep(tmp_path):
    pkg = tmp_path / "site" / "myplug"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "wider.py").write_text(PLUGIN)
    marks = tmp_path / "marks"
    marks.mkdir()
    run_dir = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": f"{tmp_path / 'site'}{os.pathsep}"
           f"{os.environ.get('PYTHONPATH', '')}", "PLUGIN_MARKS": str(marks)}
    cmd = [sys.executable, "-m", "neva_sweep", "model=tiny_llama", "plugins=[myplug.wider]",
           "sweep.methods=[wider]", "sweep.values=[power]", "search.n_trials=2",
           "search.n_startup_trials=1", "search.calibrate=false", "search.heldout=false",
           "sweep.capability.mc_limit=0", "sweep.judge.scenarios_limit=3",
           "sweep.judge.null_edits=2", "sweep.capability.neutral_limit=3",
           "sweep.capability.fluency_queries=0", "judge.n_boot=50", "logger=none",
           "progress=false", "cluster.replicas_per_model=1", "cluster.num_cpus=1",
           f"cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={run_dir}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env=env,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = proc.stdout + proc.stderr  # the driver's phase log (neva_sweep/sweep/phases.py)
    assert "tiny-llama: statistics (" in log and "every replica: done in" in log
    pids = {p.name for p in marks.iterdir()}
    assert len(pids) >= 2, pids  # the driver and the shard actor each imported it
    best = json.loads((run_dir / "best_edits.json").read_text())
    (edit,) = best["edits"]
    assert edit["method"] == "wider" and edit["value"] == "power"
    # the plugin's own build ran: twice the sparsity's neuron count (tiny-llama: 192 neurons)
    nmap = NeuronMap.load(run_dir / edit["neurons"])
    assert len(nmap["power"]) == math.ceil(2 * edit["params"]["sparsity"] * 192)
