"""task=export: a found edit as files that work without neva_sweep (neva_sweep/exporting.py,
the standalone loader neva_sweep/export.py). The exported hooks and the folded weights are
checked in a fresh Python process that imports torch, transformers, safetensors and the
copied export.py only, against ``nv.apply`` on the same tiny-llama."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

import neva_sweep as nv
from neva_sweep import export
from neva_sweep.config import ConfigError
from neva_sweep.edits.residual import ResidualEdit, caa_edit
from neva_sweep.exporting import export_edit
from neva_sweep.neurons.gate import gate_of

TEXTS = ["I help my neighbour carry boxes up the stairs.", "Win the match."]
ENTRY = {"model": "tiny-llama", "value": "power"}


def entry(method: str) -> dict:
    return {**ENTRY, "method": method}


def run_fresh(script: str, *args: str) -> dict:
    """Run ``script`` in a new interpreter (cwd: its own folder); its last stdout line is
    a JSON report."""
    path = Path(args[0]) / "check.py"
    path.write_text(textwrap.dedent(script))
    done = subprocess.run([sys.executable, str(path), *args], capture_output=True, text=True,
                          timeout=120, cwd=path.parent)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def edits(tiny_stats) -> dict:
    """One edit per case the loader must reproduce (all toward power on tiny-llama)."""
    neurons = nv.select_neurons(tiny_stats, "power", sparsity=0.05)["power"]
    return {
        "add": nv.NeuronEdit(neurons, "add", 4.0),
        # conditioned (on where the activation is past the midpoint), after the prompt only
        "gate_neuron": nv.NeuronEdit(neurons, "gate_neuron", 6.0, "response"),
        "residual": caa_edit(tiny_stats, "power", [1], 4.0),
        "gated_set": nv.NeuronEdit(neurons, "set", 3.0, gate=gate_of(tiny_stats, "value",
                                                                     "power")),
        "gated_residual": caa_edit(tiny_stats, "power", [0, 1], 4.0, "response",
                                   gate=tiny_stats.gate),
    }


def expected(host, edit, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """nv.apply's logits and greedy tokens (4 new) for ``batch``."""
    with torch.no_grad(), nv.apply(host, edit):
        logits = host.model(**batch).logits
        tokens = host.model.generate(**batch, max_new_tokens=4, do_sample=False,
                                     pad_token_id=host.tokenizer.pad_token_id)
    return logits, tokens


HOOKS_CHECK = """
    import json, sys
    import torch
    from transformers import AutoModelForCausalLM
    sys.path.insert(0, sys.argv[1])  # the export's output dir: its export.py
    import export

    model = AutoModelForCausalLM.from_pretrained(sys.argv[2]).eval()
    data = torch.load(sys.argv[3], weights_only=True)
    batch, report = data["batch"], {}
    for name, case in data["cases"].items():
        with torch.no_grad(), export.install(model, case["path"]) as handle:
            logits = model(**batch).logits
            tokens = model.generate(**batch, max_new_tokens=4, do_sample=False,
                                    pad_token_id=data["pad"])
        report[name] = {"err": float((logits - case["logits"]).abs().max()),
                        "moved": float((case["logits"] - data["base"]).abs().max()),
                        "tokens": torch.equal(tokens, case["tokens"]),
                        "gated": handle.gate is not None}
    with torch.no_grad():
        report["removed"] = torch.equal(model(**batch).logits, data["base"])
    report["neva_sweep"] = sorted(m for m in sys.modules if m.startswith("neva_sweep"))
    print(json.dumps(report))
"""


def test_exported_hooks_match_nv_apply_in_a_fresh_process(tiny_host, edits, tmp_path):
    out, model_dir = tmp_path / "export", tmp_path / "model"
    tiny_host.model.save_pretrained(model_dir)  # the same random tiny-llama, plain HF
    batch = tiny_host.tokenize(TEXTS, padding_side="left")
    with torch.no_grad():
        base = tiny_host.model(**batch).logits
    cases = {}
    for name, edit in edits.items():
        path, loader = export_edit(tiny_host, edit, entry(name), "hooks", out)
        logits, tokens = expected(tiny_host, edit, batch)
        cases[name] = {"path": str(path), "logits": logits, "tokens": tokens}
    assert loader == out / "export.py" and loader.read_text() == Path(export.__file__).read_text()
    torch.save({"cases": cases, "base": base, "pad": tiny_host.tokenizer.pad_token_id,
                "batch": {k: v for k, v in batch.items()}}, tmp_path / "expected.pt")

    report = run_fresh(HOOKS_CHECK, str(out), str(model_dir), str(tmp_path / "expected.pt"))
    assert report.pop("neva_sweep") == [] and report.pop("removed")
    for name, r in report.items():
        assert r["err"] <= 1e-5 and r["tokens"], (name, r)
        assert r["moved"] > 1e-3, (name, r)  # the edit does something to compare
        assert r["gated"] == name.startswith("gated"), name


def test_hooks_file_records_the_edit_and_refuses_another_model(tiny_host, edits, tmp_path):
    path, _ = export_edit(tiny_host, edits["gated_residual"], entry("diffmean"), "hooks",
                          tmp_path)
    assert path.name == "tiny-llama-power-diffmean.safetensors"
    tensors, meta = export.read(path)
    assert sorted(tensors) == ["gate.bias", "gate.mean", "gate.std", "gate.weight",
                               "residual.0", "residual.1"]
    torch.testing.assert_close(tensors["residual.1"], 4.0 * edits["gated_residual"].vectors[1])
    assert meta["kind"] == "residual" and meta["positions"] == "response"
    assert meta["fingerprint"] == tiny_host.meta["fingerprint"] == export.fingerprint(
        tiny_host.model)
    assert meta["gate"] == {"layer": 1, "name": "context", "value": None}
    assert (meta["value"], meta["method"], meta["model_type"]) == ("power", "diffmean", "llama")

    other = nv.load_model("tiny-gpt2")
    with pytest.raises(ValueError, match="found on model 'tiny-llama' .*allow_other_model"):
        export.install(other.model, path)


def test_loader_is_standalone_and_knows_neva_sweeps_architectures(tiny_host):
    """export.py imports nothing of neva_sweep, and its table and fingerprint are
    neva_sweep's (tested on two architectures)."""
    from neva_sweep.models.arch import ARCHITECTURES

    tree = ast.parse(Path(export.__file__).read_text())
    imported = {(n.module if isinstance(n, ast.ImportFrom) else a.name).split(".")[0]
                for n in ast.walk(tree) if isinstance(n, ast.Import | ast.ImportFrom)
                for a in n.names}
    assert imported <= {"__future__", "hashlib", "json", "pathlib", "typing", "torch",
                        "safetensors"}, imported
    assert export.ARCHITECTURES == {k: (a.layers, a.site) for k, a in ARCHITECTURES.items()}
    gpt2 = nv.load_model("tiny-gpt2")
    for host in (tiny_host, gpt2):
        assert export.fingerprint(host.model) == host.meta["fingerprint"]


WEIGHTS_CHECK = """
    import json, sys
    import torch
    from transformers import AutoModelForCausalLM

    data = torch.load(sys.argv[2], weights_only=True)
    report = {}
    for name, case in data["cases"].items():
        model, info = AutoModelForCausalLM.from_pretrained(case["path"],
                                                           output_loading_info=True)
        with torch.no_grad():
            logits = model.eval()(**data["batch"]).logits
        report[name] = {"err": float((logits - case["logits"]).abs().max()),
                        "moved": float((case["logits"] - data["base"]).abs().max()),
                        "load": {k: sorted(map(str, v)) for k, v in info.items() if v}}
    report["neva_sweep"] = sorted(m for m in sys.modules if m.startswith("neva_sweep"))
    print(json.dumps(report))
"""


def test_folded_weights_reload_with_plain_transformers(tiny_stats, edits, tmp_path):
    neurons = nv.select_neurons(tiny_stats, "power", sparsity=0.05)["power"]
    static = {"add_sd": nv.NeuronEdit(neurons, "add_sd", 2.0), "residual": edits["residual"]}
    cases, base = {}, None
    for name, edit in static.items():
        host = nv.load_model("tiny-llama")  # folding changes the model: a fresh one each
        batch = host.tokenize(TEXTS, padding_side="left")
        with torch.no_grad():
            base = host.model(**batch).logits
        logits, _ = expected(host, edit, batch)
        (path,) = export_edit(host, edit, entry(name), "weights", tmp_path)
        assert (path / "tokenizer.json").is_file() and host.model.config.mlp_bias
        assert json.loads((path / "neva_sweep_edit.json").read_text())["format"] == "weights"
        cases[name] = {"path": str(path), "logits": logits}
    torch.save({"cases": cases, "base": base, "batch": dict(batch)}, tmp_path / "expected.pt")

    report = run_fresh(WEIGHTS_CHECK, str(tmp_path), str(tmp_path / "expected.pt"))
    assert report.pop("neva_sweep") == []
    for name, r in report.items():
        assert r["load"] == {} and r["err"] <= 1e-5 and r["moved"] > 1e-3, (name, r)


def test_weights_refuse_what_a_bias_cannot_hold(tiny_host, tiny_stats, edits, tmp_path):
    neurons = nv.select_neurons(tiny_stats, "power", sparsity=0.05)["power"]
    for edit, why in [(nv.NeuronEdit(neurons, "scale", 1.0), "rule 'scale'"),
                      (edits["gate_neuron"], "positions=response"),
                      (edits["gated_set"], "is gated")]:
        with pytest.raises(ConfigError, match=f"^format: weights cannot hold .*{why}.*"
                                              "use format=hooks"):
            export_edit(tiny_host, edit, entry("neva"), "weights", tmp_path)
    qwen2 = nv.load_model("tiny-qwen2")  # no mlp_bias in its config
    with pytest.raises(ConfigError, match="'qwen2'.*Qwen2Config cannot declare one"):
        export_edit(qwen2, ResidualEdit(torch.ones(1, 64), (1,), 1.0), entry("diffmean"),
                    "weights", tmp_path)
    assert not list(tmp_path.iterdir())  # nothing written


def test_weights_refuse_a_block_that_normalises_after_the_mlp(tmp_path):
    """Post-LN OPT (do_layer_norm_before=false) normalises after adding the MLP output, so a
    bias is not a steering vector there: the folded logits differ and it is refused."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from neva_sweep.models.host import host_from_model
    from neva_sweep.models.registry import embedded_tokenizer

    tok = embedded_tokenizer()
    cfg = AutoConfig.for_model("opt", vocab_size=len(tok), hidden_size=64, ffn_dim=96,
                               word_embed_proj_dim=64, num_hidden_layers=2,
                               num_attention_heads=4, do_layer_norm_before=False,
                               pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    host = host_from_model(AutoModelForCausalLM.from_config(cfg), tok, "post-ln-opt")
    with pytest.raises(ConfigError, match="logits differ from the edit's"):
        export_edit(host, ResidualEdit(torch.ones(1, 64), (0,), 2.0), entry("diffmean"),
                    "weights", tmp_path)


def test_steering_vector_files(tiny_host, edits, tmp_path):
    sv_mod = pytest.importorskip("steering_vectors")
    from gguf import GGUFReader

    edit = edits["residual"]  # block 1 of 2
    sv_path, gguf_path = export_edit(tiny_host, edit, entry("diffmean"), "steering_vector",
                                     tmp_path)
    sv = sv_mod.SteeringVector(**torch.load(sv_path, weights_only=True))
    batch = tiny_host.tokenize(TEXTS, padding_side="left")
    with torch.no_grad():
        want, _ = expected(tiny_host, edit, batch)
        with sv.apply(tiny_host.model):
            got = tiny_host.model(**batch).logits
    assert float((got - want).abs().max()) <= 1e-5

    reader = GGUFReader(str(gguf_path))
    assert [(t.name, t.shape.tolist()) for t in reader.tensors] == [("direction.1", [64])]
    torch.testing.assert_close(torch.from_numpy(reader.tensors[0].data.copy()),
                               4.0 * edit.vectors[0], rtol=0, atol=0)
    field = reader.fields
    assert field["general.architecture"].contents() == "controlvector"
    assert field["controlvector.layer_count"].contents() == 1
    assert field["controlvector.model_hint"].contents() == "llama"


def test_steering_vector_refuses_neurons_gates_and_block_zero(tiny_host, edits, tmp_path):
    for edit, why in [(edits["add"], "holds steering-vector edits .*changes 10 MLP neurons"),
                      (edits["gated_residual"], "it is gated"),
                      (ResidualEdit(torch.ones(1, 64), (0,), 1.0), "steers block 0")]:
        with pytest.raises(ConfigError, match=f"^format: steering_vector .*{why}"):
            export_edit(tiny_host, edit, entry("m"), "steering_vector", tmp_path)
    with pytest.raises(ConfigError, match="is a prompt .*prepend it.*'Prioritise power.'"):
        export_edit(tiny_host, nv.PromptEdit("Prioritise power."), entry("prompt"), "hooks",
                    tmp_path)


# -- the task: run_dir, value/method, format -----------------------------------------------
@pytest.fixture
def sweep_dir(tmp_path, config) -> Path:
    """A run directory with a neva and a diffmean edit toward power (built from the current
    statistics when loaded)."""
    model = OmegaConf.to_container(config("model=tiny_llama").model)
    neva = {"sparsity": 0.05, "magnitude": 4.0, "rule": "add", "positions": "all"}
    diffmean = {"layer_frac": 1.0, "n_layers": 1, "coefficient": 4.0, "positions": "all"}
    edits = [{**entry(m), "model_config": model, "params": p}
             for m, p in (("neva", neva), ("diffmean", diffmean))]
    run = tmp_path / "sweep"
    run.mkdir()
    (run / "best_edits.json").write_text(json.dumps({"edits": edits, "missing": []}))
    return run


def test_export_task(sweep_dir, tiny_host, tiny_stats, config, tmp_path, monkeypatch, capsys):
    from neva_sweep import cli as tasks

    monkeypatch.setattr("neva_sweep.models.host.load_model", lambda cfg: tiny_host)
    monkeypatch.setattr(tasks, "stats_from_config", lambda cfg, host: tiny_stats)
    cli = ["task=export", "model=tiny_llama", "progress=false"]
    run, out = f"run_dir={sweep_dir}", tmp_path / "out"
    tasks.run(config(*cli, run, "method=diffmean", "format=steering_vector"), out)
    printed = capsys.readouterr().out
    for name in ("tiny-llama-power-diffmean.steering_vector.pt", "tiny-llama-power-diffmean.gguf"):
        assert (out / name).is_file() and f"wrote {out / name}" in printed

    tasks.run(config(*cli, run, "value=power", "method=neva"), out)  # format=hooks: default
    _, meta = export.read(out / "tiny-llama-power-neva.safetensors")
    assert meta["kind"] == "neurons" and meta["edit"]["rule"] == "add"
    assert meta["edit"]["n_neurons"] == 10
    assert (out / "export.py").is_file()

    nope = f"run_dir={tmp_path / 'nope'}"
    for overrides, message in [
            ([run], r"^value, method: 2 edits in .* match .*Edits in the file: "
                    r"tiny-llama/power/neva, tiny-llama/power/diffmean"),
            ([run, "method=neva", "format=onnx"],
             "^format: unknown export format 'onnx'; valid choices: hooks, weights, "
             "steering_vector"),
            ([run, "method=neva", "format=steering_vector"], "^format: steering_vector holds"),
            (["method=neva", nope], "^run_dir: no such directory"),
            (["method=neva", f"run_dir={out}"], "^run_dir: .* has no best_edits.json"),
            ([run, "method=neva", "value=kindness"], "^value: unknown value 'kindness'")]:
        with pytest.raises(ConfigError, match=message):
            tasks.run(config(*cli, *overrides), tmp_path / "refused")
    assert not (tmp_path / "refused").exists() or not any((tmp_path / "refused").iterdir())
