"""Batched greedy generation with left padding (the decoding every judge and task shares)."""

from __future__ import annotations

import torch

from .models.host import ModelHost


@torch.inference_mode()
def greedy_replies(
    host: ModelHost,
    prompts: list[str],
    max_new_tokens: int = 64,
    batch_size: int = 8,
    chat: bool = True,
) -> list[str]:
    """Greedy replies to ``prompts`` (wrapped in the chat template when ``chat``).

    Prompts are left-padded so every row's last prompt token sits at the same position,
    which is what ``positions="response"`` edits rely on.
    """
    tok = host.tokenizer
    texts = [host.chat_prompt(p) if chat else p for p in prompts]
    replies: list[str] = [""] * len(texts)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        enc = host.tokenize([texts[i] for i in idx], padding_side="left")
        out = host.model.generate(
            **enc,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            temperature=None,
            top_p=None,
            top_k=None,
            pad_token_id=tok.pad_token_id,
        )
        new = out[:, enc.input_ids.shape[1] :]
        for i, row in zip(idx, new):
            replies[i] = tok.decode(row, skip_special_tokens=True).strip()
    return replies
