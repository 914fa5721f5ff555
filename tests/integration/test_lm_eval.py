"""lm-evaluation-harness adapter: a local offline task on tiny-llama, edited and unedited."""

from __future__ import annotations

import json
import shutil
import socket
import sys
from pathlib import Path

import pytest
import torch

import neva_sweep as nv
from neva_sweep.edits.neuron import Editor
from neva_sweep.edits.prompt import prompt_edit
from neva_sweep.edits.residual import caa_edit
from neva_sweep.evaluation.lm_eval_adapter import N_SAMPLES, lm_eval_drop, lm_eval_scores
from tests.helpers import n_hooks

TASK_DIR = Path(__file__).parents[1] / "lm_eval_task"
TASK = "neva_general_knowledge"
N_DOCS = 12


@pytest.fixture(scope="module", autouse=True)
def no_network():
    """Every socket connect is recorded and refused: the adapter must never try the network."""
    attempts: list = []

    def refuse(self, address):
        attempts.append(address)
        raise OSError(f"network access attempted: {address}")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", refuse)
        yield attempts
    assert attempts == []


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory) -> Path:
    """The shipped task with its data file made absolute (`datasets` resolves it from cwd),
    plus a task whose dataset exists only on the Hub. One dir: the task index is cached."""
    out = tmp_path_factory.mktemp("lm_eval_task")
    shutil.copy(TASK_DIR / "general_knowledge.jsonl", out)
    yaml = (TASK_DIR / "general_knowledge.yaml").read_text()
    data = out / "general_knowledge.jsonl"
    (out / "general_knowledge.yaml").write_text(
        yaml.replace("test: general_knowledge.jsonl", f"test: {data}"))
    (out / "remote.yaml").write_text(
        "task: neva_remote_only\ndataset_path: neva-sweep-tests/not-in-any-cache\n"
        "output_type: multiple_choice\ntest_split: test\ndoc_to_text: '{{q}}'\n"
        "doc_to_choice: ['a', 'b']\ndoc_to_target: 0\n")
    return out


@pytest.fixture(scope="module")
def base(tiny_host, task_dir) -> dict:
    return lm_eval_scores(tiny_host, [TASK], include_path=task_dir)


@pytest.fixture(scope="module")
def stats(tiny_host) -> nv.NeuronStats:
    return nv.collect_stats(tiny_host, nv.load_probes().shard(0, 4), progress=False)


@pytest.fixture(scope="module")
def power(stats) -> nv.ValueNeurons:
    return nv.select_neurons(stats, value="power", sparsity=0.2)["power"]


def test_local_task_runs_offline(tiny_host, task_dir, base):
    scores = base[TASK]
    assert 0.0 <= scores["acc"] <= 1.0
    assert scores["acc_stderr"] > 0.0
    assert scores[N_SAMPLES] == N_DOCS
    assert "brier_score" in scores and not any("," in k for k in scores)
    rng = torch.random.get_rng_state()
    limited = lm_eval_scores(tiny_host, [TASK], include_path=task_dir, limit=5)
    assert limited[TASK][N_SAMPLES] == 5
    assert torch.equal(torch.random.get_rng_state(), rng)  # lm_eval reseeds; we restore


def test_zero_magnitude_edit_is_identity(tiny_host, task_dir, base, power):
    edited = lm_eval_scores(tiny_host, [TASK], [nv.EditSpec(power, "scale", 0.0)],
                            include_path=task_dir)
    assert edited == base
    assert all(v == 0.0 for v in lm_eval_drop(base, edited)[TASK].values())


@pytest.fixture(scope="module")
def strong(tiny_host, task_dir, power) -> dict[str, dict]:
    spec = [nv.EditSpec(power, "scale", 50.0)]
    return {pos: lm_eval_scores(tiny_host, [TASK], spec, pos, include_path=task_dir)
            for pos in ("all", "response")}


@pytest.mark.parametrize("positions", ["all", "response"])
def test_strong_edit_changes_loglikelihoods(tiny_host, base, strong, positions):
    edited = strong[positions]
    # Brier score is continuous in the per-choice log-likelihoods: it moves when they do.
    drop = lm_eval_drop(base, edited)[TASK]
    assert abs(drop["brier_score"]) > 1e-4
    assert drop["acc"] == pytest.approx(base[TASK]["acc"] - edited[TASK]["acc"])
    assert edited[TASK][N_SAMPLES] == N_DOCS
    assert all(not site._forward_pre_hooks for site in tiny_host.sites)  # hooks removed


def test_response_positions_start_at_the_last_context_token(tiny_host, task_dir, power, strong,
                                                            monkeypatch):
    """Each scored row tells the editor where its answer starts, so the edit covers the last
    question token and the answer; editing the question too gives other scores."""
    assert strong["all"][TASK]["brier_score"] != strong["response"][TASK]["brier_score"]
    seen: list[tuple[torch.Tensor | None, int]] = []
    mask = Editor._position_mask

    def spy(self, bsz, seq, device):
        seen.append((self.response_start, seq))
        return mask(self, bsz, seq, device)

    monkeypatch.setattr(Editor, "_position_mask", spy)
    lm_eval_scores(tiny_host, [TASK], [nv.EditSpec(power, "scale", 50.0)], "response",
                   include_path=task_dir, limit=3)
    assert seen and all(start is not None for start, _ in seen)
    assert all(1 <= int(start.min()) and int(start.max()) <= seq for start, seq in seen)


def test_an_edit_s_own_positions_are_used(tiny_host, task_dir, power, strong):
    own = nv.NeuronEdit(power, "scale", 50.0, "response")
    assert lm_eval_scores(tiny_host, [TASK], [own], include_path=task_dir) == strong["response"]


@pytest.mark.parametrize("kind", ["residual", "prompt"])
def test_residual_and_prompt_edits(kind, tiny_host, task_dir, base, stats):
    """Steering vectors are hooks, a prompt is a prefix to every request: strength 0 (an
    empty prompt) gives the base scores, a strong edit other ones."""
    zero, strong = {"residual": (caa_edit(stats, "power", [1], 0.0),
                                 caa_edit(stats, "power", [1], 8.0)),
                    "prompt": (nv.PromptEdit(""), prompt_edit("power", 3))}[kind]
    hooks = n_hooks(tiny_host)
    assert lm_eval_scores(tiny_host, [TASK], [zero], include_path=task_dir) == base
    edited = lm_eval_scores(tiny_host, [TASK], [strong], include_path=task_dir)
    assert abs(lm_eval_drop(base, edited)[TASK]["brier_score"]) > 1e-4
    assert n_hooks(tiny_host) == hooks  # removed again


def test_evaluate_with_a_caa_best_edit_scores_lm_eval_with_it(tiny_host, task_dir, tmp_path,
                                                              monkeypatch):
    """task=evaluate best_edits=... with a steering-vector edit, lm-eval tasks included: the
    lm-eval side runs the chosen edit at its own positions."""
    from omegaconf import OmegaConf

    from neva_sweep import cli as tasks
    from neva_sweep.config import compose_config

    # the entry's model (tasks import load_model when they run)
    monkeypatch.setattr("neva_sweep.models.host.load_model", lambda cfg: tiny_host)

    probes = Path(nv.data.__file__).with_name("data") / "probes.jsonl"
    rows, per_value = [], {}
    for line in probes.read_text().splitlines():  # three identify probes per value: fast
        row = json.loads(line)
        if row["split"] == "identify" and per_value.get(row["value"], 0) < 3:
            per_value[row["value"]] = per_value.get(row["value"], 0) + 1
            rows.append(line)
    (tmp_path / "probes.jsonl").write_text("\n".join(rows) + "\n")
    fast = ["model=tiny_llama", f"cache_dir={tmp_path / 'cache'}", "progress=false",
            f"data.probes={tmp_path / 'probes.jsonl'}",
            "judge.n_boot=50", "judge.scenarios_limit=4", "judge.null_edits=2",
            "capability.mc_limit=4", "capability.neutral_limit=2",
            "capability.fluency_queries=0", f"capability.lm_eval_include={task_dir}",
            f"capability.lm_eval_tasks=[{TASK}]", "capability.lm_eval_limit=4"]
    cfg = compose_config(*fast)
    params = {"layer_frac": 1.0, "n_layers": 1, "coefficient": 8.0, "positions": "response"}
    entry = {"model": "tiny-llama", "model_config": OmegaConf.to_container(cfg.model),
             "value": "power", "method": "caa", "params": params, **params}
    best = tmp_path / "best_edits.json"
    best.write_text(json.dumps({"edits": [entry]}))
    rec = tasks.evaluate_config(compose_config(*fast, f"best_edits={best}"))
    assert rec["edit"]["kind"] == "residual" and rec["edit"]["positions"] == "response"
    assert rec["edit"]["layers"] == [1] and rec["edit"]["method"] == "caa"
    assert rec["lm_eval_edited"][TASK][N_SAMPLES] == 4
    assert rec["lm_eval_edited"] != rec["lm_eval_base"]


def test_unknown_task_raises_keyerror(tiny_host, task_dir):
    with pytest.raises(KeyError, match="no_such_task.*capability.lm_eval_tasks.*include_path"):
        lm_eval_scores(tiny_host, ["no_such_task"], include_path=task_dir)


def test_dataset_missing_offline_names_the_task(tiny_host, task_dir):
    with pytest.raises(FileNotFoundError, match="neva_remote_only.*not available offline"):
        lm_eval_scores(tiny_host, ["neva_remote_only"], include_path=task_dir)


def test_missing_lm_eval_says_how_to_install(tiny_host, monkeypatch):
    monkeypatch.setitem(sys.modules, "lm_eval", None)
    with pytest.raises(ImportError, match="pip install lm-eval"):
        lm_eval_scores(tiny_host, [TASK])
