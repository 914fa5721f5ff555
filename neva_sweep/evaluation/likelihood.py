"""Per-text log-likelihood under a host (edited or not): the basic scoring primitive."""

from __future__ import annotations

import torch

from ..models.host import ModelHost


@torch.inference_mode()
def mean_token_logprob(
    host: ModelHost, texts: list[str], batch_size: int = 16, max_length: int = 128
) -> torch.Tensor:
    """Mean log-probability per predicted token of each text, (len(texts),) float64.

    Texts are right-padded; pad positions are masked out of both the inputs' attention
    and the average. The first token of each text is context only.
    """
    out = torch.empty(len(texts), dtype=torch.float64)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        enc = host.tokenize([texts[i] for i in idx], padding_side="right", max_length=max_length)
        logits = host.model(input_ids=enc.input_ids, attention_mask=enc.attention_mask).logits
        logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)  # (B, S-1, vocab)
        target = enc.input_ids[:, 1:]
        tok_lp = logp.gather(-1, target[..., None]).squeeze(-1)  # (B, S-1)
        mask = enc.attention_mask[:, 1:].to(tok_lp.dtype)
        per_text = (tok_lp * mask).sum(1) / mask.sum(1).clamp(min=1)
        out[idx] = per_text.double().cpu()
    return out
