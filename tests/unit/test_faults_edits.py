"""Faults in edits and derived files, on tiny models: edits that do not fit the model,
best edits whose inputs changed, corrupt or unwritable caches, over-long prompts."""

from __future__ import annotations

import dataclasses
import errno
import json
import logging

import numpy as np
import pytest
import torch

import neva_sweep as nv
from neva_sweep.config import JudgeConfig
from neva_sweep.data import DataError, load_records
from neva_sweep.evaluation.capability import CapabilityConfig
from neva_sweep.evaluation.evaluator import Evaluator
from neva_sweep.files import atomic_path
from neva_sweep.neurons.stats import StatsConfig, cached_stats
from tests.helpers import n_hooks


def small_evaluator(host, cache_dir) -> Evaluator:
    """The questionnaire judge (no generation) and a few capability items: seconds."""
    return Evaluator(host, JudgeConfig(name="questionnaire", n_boot=20),
                     CapabilityConfig(mc_limit=4, neutral_limit=2, fluency_queries=0),
                     cache_dir=cache_dir)


def no_temporaries(directory) -> list[str]:
    return sorted(p.name for p in directory.rglob("*") if p.name.endswith(".tmp"))


# -- derived files that heal --------------------------------------------------------------
def test_truncated_statistics_cache_is_moved_aside_and_recomputed(tiny_host, small_probes,
                                                                   tmp_path, caplog):
    cfg = StatsConfig()
    first = cached_stats(tiny_host, small_probes, cfg, tmp_path, progress=False)
    (path,) = tmp_path.glob("*.safetensors")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # a cut-off copy
    with caplog.at_level(logging.WARNING, logger="neva_sweep"):
        again = cached_stats(tiny_host, small_probes, cfg, tmp_path, progress=False)
    assert str(path) in caplog.text and "statistics cache" in caplog.text
    assert path.with_name(path.name + ".corrupt").is_file()
    torch.testing.assert_close(again.mean, first.mean)
    assert nv.NeuronStats.load(path).count.sum() == first.count.sum()  # rewritten whole


def test_corrupt_evaluation_caches_are_recomputed(tiny_host, tiny_stats, tmp_path, caplog):
    ev = small_evaluator(tiny_host, tmp_path)
    base = ev.base()
    null = ev.null(tiny_stats, n=2)
    (pt,) = tmp_path.glob("*-base-*.pt")
    (js,) = tmp_path.glob("*-null-*.json")
    pt.write_bytes(pt.read_bytes()[:100])  # a torch zip cut short
    js.write_text('{"mean": 0.1, "sd"')  # JSON cut short
    fresh = small_evaluator(tiny_host, tmp_path)
    with caplog.at_level(logging.WARNING, logger="neva_sweep"):
        again = fresh.base()
        null_again = fresh.null(tiny_stats, n=2)
    for path in (pt, js):
        assert str(path) in caplog.text
        assert path.with_name(path.name + ".corrupt").is_file() and path.is_file()
    np.testing.assert_allclose(again.judgement.E, base.judgement.E)
    assert null_again["alignment"] == pytest.approx(null["alignment"])
    assert no_temporaries(tmp_path) == []


def test_statistics_write_without_space_leaves_no_temporary(tiny_stats, tmp_path, monkeypatch):
    def full_disk(tensors, filename, metadata=None):
        with open(filename, "wb") as f:  # half a file, then the disk is full
            f.write(b"\0" * 64)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("safetensors.torch.save_file", full_disk)  # files.save_tensors'
    target = tmp_path / "cache" / "stats.safetensors"
    with pytest.raises(OSError, match=f"no space left on {target}"):
        tiny_stats.save(target)
    assert list(target.parent.iterdir()) == []


def test_statistics_survive_a_full_cache(tiny_host, small_probes, tmp_path, monkeypatch, caplog):
    """Collected statistics are kept for the run when the cache cannot take them."""
    import neva_sweep.neurons.stats as stats_module

    def full_disk(tensors, filename, metadata=None):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("safetensors.torch.save_file", full_disk)  # files.save_tensors'
    cache = tmp_path / "cache"
    stats = stats_module.cached_stats(tiny_host, small_probes, nv.StatsConfig(), cache,
                                      progress=False)
    assert stats.n_neurons == tiny_host.n_neurons and list(cache.iterdir()) == []
    assert "statistics not cached: no space left on" in caplog.text


def test_evaluation_cache_write_without_space_leaves_no_temporary(tiny_host, tmp_path,
                                                                  monkeypatch):
    ev = small_evaluator(tiny_host, None)
    base = ev.base()

    def full_disk(obj, f, *args, **kwargs):
        open(f, "wb").close()
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    target = tmp_path / "base.pt"
    with pytest.raises(OSError, match="no space left on"):
        base.save(target)
    assert list(tmp_path.iterdir()) == []


def test_torch_writer_failure_on_a_full_disk_says_no_space(tmp_path, monkeypatch):
    """torch.save's zip writer turns ENOSPC into a RuntimeError without errno."""
    import shutil
    from collections import namedtuple

    import neva_sweep.files as files

    def zip_writer(obj, f, *args, **kwargs):
        open(f, "wb").close()
        raise RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")

    monkeypatch.setattr(torch, "save", zip_writer)
    real_usage = shutil.disk_usage
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(files.shutil, "disk_usage", lambda d: usage(10 << 20, 10 << 20, 0))
    with pytest.raises(OSError, match="no space left on"), atomic_path(tmp_path / "a.pt") as t:
        torch.save({}, t)
    monkeypatch.setattr(files.shutil, "disk_usage", real_usage)  # space enough: as it was
    with pytest.raises(RuntimeError, match="file write failed"), \
            atomic_path(tmp_path / "a.pt") as t:
        torch.save({}, t)
    assert list(tmp_path.iterdir()) == []


def test_failed_atomic_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "x.json"
    path.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert path.read_text() == "old" and no_temporaries(tmp_path) == []


def test_binary_garbage_in_a_data_file_names_it(tmp_path):
    path = tmp_path / "probes.jsonl"
    path.write_bytes(b'{"value": "power", "split": "identify", "text": "a"}\n\xff\xfe\x00\n')
    with pytest.raises(DataError, match=f"^{path}:2: not UTF-8"):
        load_records("probes", path)


def neurons(layers: list[int], indices: list[int], model=None) -> nv.ValueNeurons:
    k = len(layers)
    return nv.ValueNeurons(torch.tensor(layers), torch.tensor(indices), torch.ones(k),
                           torch.ones(k), torch.ones(k), model)


@pytest.fixture(scope="module")
def nmap(tiny_stats) -> nv.NeuronMap:
    return nv.select_neurons(tiny_stats, sparsity=0.05)


@pytest.fixture(scope="module")
def other_host() -> nv.ModelHost:
    """Another model with the same layer sizes as tiny-llama (2 x 96 neurons)."""
    return nv.load_model("tiny-qwen2")


def test_neuron_index_beyond_a_layer_s_width_is_refused(tiny_host):
    hooks = n_hooks(tiny_host)
    wide = nv.NeuronEdit(neurons([0, 1], [3, 96]))  # layer 1 has neurons 0..95
    with pytest.raises(ValueError, match="neuron index 96 of layer 1 is outside its MLP width "
                                         r"96 \(valid 0..95\)"):
        with nv.apply(tiny_host, wide):
            pass
    deep = nv.NeuronEdit(neurons([2], [0]))
    with pytest.raises(ValueError, match=r"layer 2 does not exist \(the model has 2 layers"):
        with nv.edit_rows(tiny_host, [deep], torch.zeros(1, dtype=torch.long)):
            pass
    assert n_hooks(tiny_host) == hooks  # nothing installed
    with pytest.raises(ValueError, match="neuron map, value power: neuron index 96 of layer 1"):
        nv.NeuronMap({"power": neurons([0, 1], [3, 96])}, [96, 96])
    with pytest.raises(ValueError, match=r"\(layer 0, index -1\) is negative"):
        nv.NeuronEdit(neurons([0], [-1]))


def test_map_of_another_model_is_refused_unless_allowed(tiny_host, other_host, nmap, batch,
                                                        tmp_path):
    assert nmap.built_for == nv.models.identity.ModelId.of_host(tiny_host)
    with pytest.raises(ValueError, match="built for another model: 'tiny-llama' .*not "
                                         "'tiny-qwen2' .*allow_other_model=True"):
        with nv.edit(other_host, nmap, value="power"):
            pass
    enc = other_host.tokenize(["I help my neighbour carry boxes."])
    base = other_host.model(**enc).logits
    with nv.edit(other_host, nmap, value="power", allow_other_model=True):
        edited = other_host.model(**enc).logits
    assert not torch.equal(base, edited)

    nmap.save(tmp_path / "map.safetensors")  # the file records the model it was built for
    loaded = nv.NeuronMap.load(tmp_path / "map.safetensors")
    assert loaded["power"].model == nmap["power"].model == nmap.built_for
    with pytest.raises(ValueError, match="built for another model"):
        with nv.apply(other_host, nv.NeuronEdit(loaded["power"])):
            pass
    with nv.apply(other_host, nv.NeuronEdit(loaded["power"], allow_other_model=True)):
        pass


def test_same_name_other_architecture_is_refused(tiny_host, nmap):
    fake = nv.models.identity.ModelId("tiny-llama", "0123456789ab")
    moved = nv.NeuronMap({"power": nmap["power"]}, nmap.layer_sizes, {**nmap.meta,
                                                                      **fake.describe()})
    with pytest.raises(ValueError, match="fingerprint 0123456789ab.*fingerprint "
                                         f"{tiny_host.meta['fingerprint']}"):
        with nv.edit(tiny_host, moved, value="power"):
            pass


def test_statistics_file_records_model_and_fingerprint(tiny_host, tiny_stats, tmp_path):
    tiny_stats.save(tmp_path / "neurons.safetensors")  # what task=identify writes
    meta = nv.NeuronStats.load(tmp_path / "neurons.safetensors").meta
    assert meta["model"] == "tiny-llama"
    assert meta["fingerprint"] == tiny_host.meta["fingerprint"]
    assert len(meta["fingerprint"]) == 12
    assert nv.load_model("tiny-gpt2").meta["fingerprint"] != meta["fingerprint"]


# -- best_edits.json: reproducible chosen edits ----------------------------------------------
FAST = ["model=tiny_llama", "progress=false", "max_new_tokens=2", "judge=questionnaire",
        "judge.n_boot=20", "judge.null_edits=2", "capability.mc_limit=4",
        "capability.neutral_limit=2", "capability.fluency_queries=0"]


@pytest.fixture
def sweep_run(tmp_path, tiny_stats, config):
    """A run directory whose best_edits.json the sweep's own writer made from one COMPLETE
    neva trial, with tiny-llama's statistics at hand (so the neurons file is saved)."""
    import optuna
    from omegaconf import OmegaConf

    from neva_sweep.config import SearchConfig
    from neva_sweep.sweep.outputs import Outputs
    from neva_sweep.sweep.plan import ModelEntry, StudyKey
    from neva_sweep.sweep.studies import open_studies
    from tests.helpers import _trial

    search = OmegaConf.merge(OmegaConf.structured(SearchConfig), {"max_kl": None})
    (state,) = open_studies([StudyKey("tiny-llama", "power", "neva")],
                            optuna.storages.InMemoryStorage(), search)
    state.study.add_trial(_trial(np.random.default_rng(0), "power", "neva",
                                 np.full(len(nv.VALUES), 0.3)))
    state.complete = 1
    model = OmegaConf.to_container(config(*FAST).model)
    outputs = Outputs(tmp_path / "run", [state], [ModelEntry("tiny-llama", model)], search)
    outputs.stats["tiny-llama"] = tiny_stats
    outputs.write()
    return tmp_path / "run"


def run_task(monkeypatch, tiny_host, tiny_stats, cfg, out):
    """A CLI task on the entry's model (tiny_host) with tiny_stats as current statistics."""
    import neva_sweep.models.host
    from neva_sweep import cli as tasks

    def load_model(model_cfg):
        return tiny_host

    monkeypatch.setattr(neva_sweep.models.host, "load_model", load_model)  # imported in tasks
    monkeypatch.setattr(tasks, "load_model", load_model, raising=False)  # or at the top
    monkeypatch.setattr(tasks, "stats_from_config", lambda cfg, host: tiny_stats)
    tasks.TASKS[cfg.task](cfg, out)


def test_best_edits_record_what_each_edit_was_built_from(sweep_run, tiny_stats, config):
    from neva_sweep.cli import stats_inputs_hash_of
    from neva_sweep.files import sha256_file
    from neva_sweep.neurons.stats import stats_inputs_hash

    (entry,) = json.loads((sweep_run / "best_edits.json").read_text())["edits"]
    assert entry["neurons_sha256"] == sha256_file(sweep_run / entry["neurons"])
    assert entry["stats_hash"] == stats_inputs_hash(tiny_stats)
    assert entry["stats_hash"] == stats_inputs_hash_of(config(*FAST))  # same data, same stats.*
    assert entry["stats_hash"] != stats_inputs_hash_of(config(*FAST, "stats.max_length=64"))


def test_best_edit_with_a_changed_neurons_file_is_refused_unless_rebuilt(
        sweep_run, tiny_host, tiny_stats, config, tmp_path, monkeypatch, capsys, caplog):
    from neva_sweep.sweep.outputs import load_best_edit

    best = sweep_run / "best_edits.json"
    cli = [*FAST, "task=steer", f"best_edits={best}", "value=power"]
    run_task(monkeypatch, tiny_host, tiny_stats, config(*cli), tmp_path)  # as recorded
    assert "edited toward power" in capsys.readouterr().out

    path = load_best_edit(best, value="power")["neurons"]
    other = nv.select_neurons(tiny_stats, "power", sparsity=0.1)  # not the sweep's neurons
    other.save(path)
    with pytest.raises(ValueError, match=r"^best_edits: the tiny-llama/power/neva edit would "
                                         r"not be the sweep's: its neurons file .* changed since"
                                         r" the sweep .*rebuild_edits=true"):
        run_task(monkeypatch, tiny_host, tiny_stats, config(*cli), tmp_path)
    run_task(monkeypatch, tiny_host, tiny_stats, config(*cli, "rebuild_edits=true"), tmp_path)
    assert "REBUILT from the current statistics" in caplog.text  # a warning in the run's log
    assert "changed since the sweep" in caplog.text

    import os
    os.unlink(path)
    with pytest.raises(ValueError, match="its neurons file .* is missing"):
        run_task(monkeypatch, tiny_host, tiny_stats, config(*cli), tmp_path)


def test_best_edit_from_other_statistics_is_refused_and_eval_json_says_rebuilt(
        sweep_run, tiny_host, tiny_stats, config, tmp_path, monkeypatch):
    cli = [*FAST, f"best_edits={sweep_run / 'best_edits.json'}", "value=power",
           f"cache_dir={tmp_path / 'cache'}", "stats.max_length=64"]  # not the sweep's stats.*
    with pytest.raises(ValueError, match="other data or statistics settings"):
        run_task(monkeypatch, tiny_host, tiny_stats, config(*cli, "task=steer"), tmp_path)
    run_task(monkeypatch, tiny_host, tiny_stats,
             config(*cli, "task=evaluate", "rebuild_edits=true"), tmp_path)
    rec = json.loads((tmp_path / "eval.json").read_text())
    assert "other data or statistics settings" in rec["edit"]["rebuilt"]
    assert rec["edit"]["method"] == "neva" and rec["alignment"] is not None


def test_best_edits_without_hashes_load_with_a_warning(tiny_stats, caplog):
    from neva_sweep.sweep.outputs import best_edit_spec

    entry = {"model": "tiny-llama", "value": "power", "method": "neva",
             "params": {"sparsity": 0.05}}  # as an older sweep wrote it
    with caplog.at_level(logging.WARNING, logger="neva_sweep"):
        edit = best_edit_spec(entry, stats=lambda: tiny_stats, inputs_hash="0" * 16)
    assert "records no hashes" in caplog.text and edit.n_neurons == 10


@pytest.mark.parametrize("text, expected", [
    ('{"edits": [', "is not valid JSON"),
    ('{"chosen": []}', "has no 'edits' list"),
    ('[1, 2]', "has no 'edits' list"),
    ('{"edits": [{"value": "power"}]}', "edit 0 lacks model, method, params"),
])
def test_malformed_best_edits_gives_one_line_naming_the_file(tmp_path, text, expected):
    from neva_sweep.sweep.outputs import load_best_edit

    path = tmp_path / "best_edits.json"
    path.write_text(text)
    with pytest.raises(ValueError) as err:
        load_best_edit(path, value="power")
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"best_edits: {path}") and expected in msg
    assert "expected a sweep's best_edits.json" in msg


# -- prompts longer than the model's context -------------------------------------------------
LONG = "I help my neighbour carry heavy boxes up the stairs every weekend. " * 8  # ~100 tokens


@pytest.fixture(scope="module")
def short_host() -> nv.ModelHost:
    """tiny-gpt2 with a 32-token position table: one position more is an IndexError."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from neva_sweep.models.host import host_from_model
    from neva_sweep.models.registry import TINY_CONFIGS, embedded_tokenizer

    tok = embedded_tokenizer()
    spec = {k: v for k, v in TINY_CONFIGS["tiny-gpt2"].items() if k != "model_type"}
    cfg = AutoConfig.for_model("gpt2", vocab_size=len(tok), max_position_embeddings=32,
                               pad_token_id=tok.pad_token_id, **spec)
    torch.manual_seed(0)
    return host_from_model(AutoModelForCausalLM.from_config(cfg), tok, "tiny-gpt2-short")


def test_scored_prompts_past_the_context_keep_their_end_with_a_warning(short_host, caplog):
    from neva_sweep.evaluation.scoring import (
        continuation_logprobs,
        next_token_logprobs,
        option_logprobs,
        token_logprobs,
    )

    assert short_host.context_length == 32 and len(short_host.tokenizer(LONG).input_ids) > 64
    cand = torch.arange(8)
    with caplog.at_level(logging.WARNING, logger="neva_sweep"):
        a = next_token_logprobs(short_host, [LONG, "Hi"], cand)  # max_length 512 > 32
    assert "1 of 2 prompts are longer than 32 tokens" in caplog.text
    b = next_token_logprobs(short_host, ["Quartz zebras jump. " + LONG, "Hi"], cand)
    torch.testing.assert_close(a, b)  # only the end was read: another start changes nothing
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="neva_sweep"):
        logp, n = continuation_logprobs(short_host, [LONG], [" and so do I."])
        token_logprobs(short_host, [LONG, "Short text here."])
        opt = option_logprobs(short_host, [LONG], [["I say yes.", "I say no."]])
    assert "1 of 1 context + continuation pairs are longer than 32" in caplog.text
    assert "1 of 2 texts are longer than 32 tokens" in caplog.text
    assert "1 of 1 prompts leave their options no room within 32 tokens" in caplog.text
    assert torch.isfinite(logp).all() and n.tolist() == [5] and torch.isfinite(opt).all()


def test_generation_past_the_context_is_refused_naming_the_limit(short_host):
    from neva_sweep.evaluation.scoring import greedy_generate

    with pytest.raises(ValueError, match=r"^a prompt has \d+ tokens \+ 4 new, more than the "
                                         "32-token context of model 'tiny-gpt2-short'; shorten"):
        greedy_generate(short_host, ["Hi", LONG], max_new_tokens=4)
    with pytest.raises(ValueError, match=r"\+ 40 new.*or lower max_new_tokens"):
        greedy_generate(short_host, ["Hi"], max_new_tokens=40)
    assert len(greedy_generate(short_host, ["Hi"], max_new_tokens=4)[0]) == 1


def test_statistics_over_long_probes_warn_or_refuse(short_host, small_probes, caplog):
    from dataclasses import replace

    # without the stance pairs, which a 32-token context cannot hold (refused on their own)
    probes = replace(small_probes, texts=(LONG, *small_probes.texts[1:]), pairs=())
    with pytest.raises(ValueError, match=r"^stats.max_length=128: probes of \d+ tokens exceed "
                                         r"the 32-token context .*set stats.max_length <= 32"):
        nv.collect_stats(short_host, probes, StatsConfig(), progress=False)
    with caplog.at_level(logging.WARNING, logger="neva_sweep"):
        stats = nv.collect_stats(short_host, probes, StatsConfig(max_length=16), progress=False)
    assert "of 60 probes are longer than stats.max_length=16 tokens" in caplog.text
    assert torch.isfinite(stats.mean).all()


def test_residual_edit_of_another_model_is_refused_unless_allowed(tiny_host, other_host,
                                                                  tiny_stats):
    """A CAA vector of the right width means nothing in another model's residual stream:
    refused like a neuron edit, with the same override."""
    caa = nv.make_edit(tiny_stats, "power", "caa", coefficient=2.0)
    assert caa.model == nv.models.identity.ModelId.of_host(tiny_host)
    hooks = n_hooks(other_host)
    with pytest.raises(ValueError, match="residual \\(CAA\\) edit was built for another model: "
                                         "'tiny-llama' .*not 'tiny-qwen2'"):
        with nv.apply(other_host, caa):
            pass
    assert n_hooks(other_host) == hooks  # nothing installed
    enc = other_host.tokenize(["I help my neighbour carry boxes."])
    base = other_host.model(**enc).logits
    with nv.apply(other_host, dataclasses.replace(caa, allow_other_model=True)):
        assert not torch.equal(base, other_host.model(**enc).logits)
    with nv.apply(tiny_host, caa):  # its own model
        pass


def test_api_misuse_names_what_is_wrong(tiny_host, tiny_stats):
    with pytest.raises(TypeError, match="parameter 'magnitude' of method 'neva' must be a "
                                        "number, got 'big'"):
        nv.make_edit(tiny_stats, "power", magnitude="big")
    with pytest.raises(TypeError, match="parameter 'strength' of method 'caa' must be a number"):
        nv.make_edit(tiny_stats, "power", "caa", strength=True)
    with pytest.raises(TypeError, match="nv.apply takes an edit, not the string 'power'; "
                                        r"build one with nv.make_edit\(stats, 'power'"):
        nv.apply(tiny_host, "power")
    with pytest.raises(TypeError, match="not a NeuronStats"):
        nv.apply(tiny_host, tiny_stats)


def test_an_applied_edit_can_be_entered_again_but_not_inside_itself(tiny_host, tiny_stats):
    hooks = n_hooks(tiny_host)
    enc = tiny_host.tokenize(["I help my neighbour carry boxes."])
    base = tiny_host.model(**enc).logits
    applied = nv.apply(tiny_host, nv.make_edit(tiny_stats, "power", sparsity=0.1))
    with applied:
        first = tiny_host.model(**enc).logits
    with applied:  # a second block installs it again
        assert torch.equal(tiny_host.model(**enc).logits, first)
    assert not torch.equal(first, base) and n_hooks(tiny_host) == hooks
    with pytest.raises(RuntimeError, match="already active: entering it again inside itself"):
        with applied:
            with applied:
                pass
    assert n_hooks(tiny_host) == hooks  # the outer block still removed its hooks
    assert torch.equal(tiny_host.model(**enc).logits, base)


def test_a_prompt_longer_than_the_context_is_named(tiny_host):
    from neva_sweep.cli import check_prompt_fits
    from neva_sweep.config import ConfigError

    check_prompt_fits(tiny_host, "I help my neighbour.", 16)
    with pytest.raises(ConfigError, match=r"prompt: \d+ tokens \(with the chat template\) plus "
                                          "max_new_tokens=4 exceed tiny-llama's context of 512"):
        check_prompt_fits(tiny_host, "word " * 2000, 4)
