"""lm-evaluation-harness adapter: a local offline task on tiny-llama, edited and unedited."""

from __future__ import annotations

import shutil
import socket
import sys
from pathlib import Path

import pytest
import torch

import neva_sweep as nv
from neva_sweep.edit import Editor
from neva_sweep.lm_eval_adapter import N_SAMPLES, lm_eval_drop, lm_eval_scores

TASK_DIR = Path(__file__).parent / "lm_eval_task"
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
def power(tiny_host) -> nv.ValueNeurons:
    stats = nv.collect_stats(tiny_host, nv.load_probes().shard(0, 4), progress=False)
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
