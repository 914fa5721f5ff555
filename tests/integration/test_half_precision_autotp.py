"""DeepSpeed AutoTP (tp_size 1, one gloo process group) in bfloat16: the engine is bitwise
the plain model."""

from __future__ import annotations

import copy

import pytest
import torch

import neva_sweep as nv


@torch.inference_mode()
def test_deepspeed_engine_is_the_bfloat16_model(monkeypatch):
    """DeepSpeed's init_inference casts every buffer to the model dtype, the float32 rotary
    frequencies included; rounded to bfloat16 they move every rotary angle and the
    engine's logits drift from the model's (0.6-1.1 on SmolLM2's logits of ~30).
    neva_sweep.models.tp restores them, so the engine is bitwise the plain model."""
    pytest.importorskip("deepspeed")
    import socket

    import torch.distributed as dist

    from neva_sweep.models.tp import _autotp, init_process_group

    for key in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)  # init_process_group sets them: restored after
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    host = nv.load_model("tiny-llama", dtype="bfloat16")
    assert host.model.model.rotary_emb.inv_freq.dtype == torch.float32
    init_process_group(0, 1, "127.0.0.1", port, backend="gloo")
    try:
        engine = _autotp(copy.deepcopy(host.model), 1, torch.bfloat16, "cpu")
    finally:
        dist.destroy_process_group()
    assert engine.model.rotary_emb.inv_freq.dtype == torch.float32
    # Long enough that bfloat16-rounded rotary frequencies change the logits.
    batch = host.tokenize([" ".join(["I help my neighbour carry boxes."] * 12), "Hi"])
    assert batch.input_ids.shape[1] > 60
    assert torch.equal(engine(**batch).logits, host.model(**batch).logits)
