"""Batched scoring primitives shared by the judges and the capability measures, and the
mean per-token log-likelihood of texts (:func:`mean_token_logprob`, unbatched by edit).

Every function takes ``edits``: a sequence of G edits of any kind
(:class:`~neva_sweep.edits.EditKind`), None meaning the unedited model. The n items are
tiled into n x G rows, row (i, g) carrying edit g, so several sweep trials share one
forward pass (the edit hooks pick each row's edit).
Results come back as arrays with a leading G axis.

Sequences are left-padded by hand with explicit ``position_ids``: every row then ends at
the last column, so the last k positions of all rows go through the LM head together
(``logits_to_keep=k``) and nothing else does.

Over-long inputs: scored sequences longer than ``max_length`` or the model's context
(:attr:`~neva_sweep.models.host.ModelHost.context_length`) keep their end (what gets
scored) and lose their start, with one warning per call saying how many were cut.
Generation does not truncate: a prompt that leaves no room for ``max_new_tokens`` within
the context is refused with a ValueError naming the limit (learned position tables would
fail with an IndexError there).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator

import torch

from ..edits.group import EditGroup, Edits, encode, grouped
from ..models.host import ModelHost

log = logging.getLogger(__name__)


def left_pad(seqs: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, ...]:
    """(input_ids, attention_mask, position_ids), each (B, S), sequences right-aligned."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for b, s in enumerate(seqs):
        ids[b, width - len(s) :] = torch.tensor(s, dtype=torch.long)
        mask[b, width - len(s) :] = 1
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids.to(device), mask.to(device), pos.to(device)


def token_limit(host: ModelHost, max_length: int | None) -> int | None:
    """The longest scored sequence: ``max_length`` or the model's context, the smaller."""
    limits = [n for n in (max_length, host.context_length) if n]
    return min(limits) if limits else None


def keep_ends(seqs: list[list[int]], limit: int | None, what: str) -> list[list[int]]:
    """The last ``limit`` tokens of each sequence (its end is what gets scored); one warning
    naming how many lost their start."""
    if limit is None:
        return seqs
    cut = sum(len(s) > limit for s in seqs)
    if cut:
        log.warning("%d of %d %s are longer than %d tokens (the scoring limit or the model's "
                    "context): their start was dropped", cut, len(seqs), what, limit)
    return [s[-limit:] if len(s) > limit else s for s in seqs]


def check_context(host: ModelHost, length: int, what: str, new_tokens: int = 0) -> None:
    """Refuse ``length`` tokens (+ ``new_tokens`` to generate) beyond the model's context."""
    limit = host.context_length
    if limit is not None and length + new_tokens > limit:
        more = f" + {new_tokens} new" if new_tokens else ""
        raise ValueError(f"{what} has {length} tokens{more}, more than the {limit}-token "
                         f"context of model {host.name!r}; shorten it"
                         + (" or lower max_new_tokens" if new_tokens else ""))


def tiled_batches(n_items: int, n_groups: int, batch_size: int, order: list[int] | None = None
                  ) -> Iterator[list[tuple[int, int]]]:
    """Batches of (item, group) rows covering n_items x n_groups; items in ``order``."""
    rows = [(i, g) for i in (order or range(n_items)) for g in range(n_groups)]
    for start in range(0, len(rows), batch_size):
        yield rows[start : start + batch_size]


def _forward(host: ModelHost, seqs: list[list[int]], keep: int, group: EditGroup,
             groups: list[int], response_start: list[int] | None = None) -> torch.Tensor:
    """Logits of the last ``keep`` positions of each left-padded row, (B, keep, vocab) float32.

    ``groups[b]``: the edit of row b (index into the group's edits). Prompt edits are
    applied here (:meth:`EditGroup.with_prompt`). ``response_start[b]``: index (within
    seqs[b]) of row b's first response token, for ``positions="response"``; None = only
    the last prompt token.
    """
    edited = [group.with_prompt(g, s) for s, g in zip(seqs, groups)]
    check_context(host, max(len(s) for s in edited), "a sequence with its edit's prompt")
    if response_start is not None:  # shifted by what the prompt added in front
        response_start = [r + len(e) - len(s) for r, e, s in zip(response_start, edited, seqs)]
    seqs = edited
    ids, mask, pos = left_pad(seqs, host.tokenizer.pad_token_id, host.device)
    kwargs = {"logits_to_keep": keep} if host.accepts("logits_to_keep") else {}
    if host.accepts("position_ids"):
        kwargs["position_ids"] = pos
    group.set_rows(groups)
    if response_start is not None:
        width = ids.shape[1]
        group.set_response_start(torch.tensor(
            [width - len(s) + r for s, r in zip(seqs, response_start)]))
    try:
        logits = host.model(input_ids=ids, attention_mask=mask, **kwargs).logits
    finally:
        group.set_response_start(None)
    return logits[:, -keep:].float()


@torch.inference_mode()
def next_token_logprobs(
    host: ModelHost, prompts: list[str], candidates: torch.Tensor, edits: Edits = (None,),
    positions: str = "all", batch_size: int = 16, max_length: int = 512,
) -> torch.Tensor:
    """log p(candidate | prompt) at the position after each prompt, (G, n, C) float64.

    ``candidates`` (C,) token ids; the prompts are used as they are (apply a chat template
    before calling). Only the last position of each row reaches the LM head.
    """
    seqs = keep_ends([encode(host, p) for p in prompts], token_limit(host, max_length),
                     "prompts")
    out = torch.empty(len(edits), len(prompts), len(candidates), dtype=torch.float64)
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    with grouped(host, edits, positions) as group:
        for rows in tiled_batches(len(seqs), len(edits), batch_size, order):
            logits = _forward(host, [seqs[i] for i, _ in rows], 1, group,
                              [g for _, g in rows])
            logp = torch.log_softmax(logits[:, -1], dim=-1)  # (B, vocab)
            sel = logp[:, candidates.to(logp.device)].double().cpu()  # (B, C)
            for b, (i, g) in enumerate(rows):
                out[g, i] = sel[b]
    return out


@torch.inference_mode()
def continuation_logprobs(
    host: ModelHost, contexts: list[str], continuations: list[str], edits: Edits = (None,),
    positions: str = "all", batch_size: int = 16, max_length: int = 512,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log p(continuation | context) per pair and edit, plus token counts.

    Returns (logp (G, n) float64, n_tokens (n,) long). The continuation is tokenised
    without special tokens and appended to the context's ids, so the scored tokens are
    exactly the continuation's. Under ``positions="response"`` the edit covers the last
    context token and the continuation.
    """
    full = []
    for ctx, cont in zip(contexts, continuations, strict=True):
        c = encode(host, cont, special=False)
        if not c:
            raise ValueError(f"empty continuation after context {ctx[:60]!r}")
        full.append((encode(host, ctx) + c, len(c)))
    kept = keep_ends([ids for ids, _ in full], token_limit(host, max_length),
                     "context + continuation pairs")  # over-long: the context's start goes
    pairs = [(ids, min(k, len(ids) - 1)) for ids, (_, k) in zip(kept, full)]
    n_tok = torch.tensor([k for _, k in pairs])
    out = torch.empty(len(edits), len(pairs), dtype=torch.float64)
    order = sorted(range(len(pairs)), key=lambda i: len(pairs[i][0]))
    with grouped(host, edits, positions) as group:
        for rows in tiled_batches(len(pairs), len(edits), batch_size, order):
            seqs = [pairs[i][0] for i, _ in rows]
            ks = [pairs[i][1] for i, _ in rows]
            keep = max(ks) + 1  # the logit before the first scored token, and after
            logits = _forward(host, seqs, keep, group, [g for _, g in rows],
                              [len(s) - k for s, k in zip(seqs, ks)])
            logp = torch.log_softmax(logits[:, :-1], dim=-1)  # (B, keep-1, vocab) predicts
            target = torch.tensor([s[-(keep - 1):] if len(s) >= keep - 1 else
                                   [0] * (keep - 1 - len(s)) + s for s in seqs],
                                  device=logp.device)  # (B, keep-1): the last keep-1 tokens
            tok = logp.gather(-1, target[..., None]).squeeze(-1)  # (B, keep-1)
            width = keep - 1
            scored = torch.arange(width, device=tok.device)[None, :] >= (
                width - torch.tensor(ks, device=tok.device)[:, None])  # (B, keep-1)
            sums = (tok * scored).sum(-1).double().cpu()
            for b, (i, g) in enumerate(rows):
                out[g, i] = sums[b]
    return out, n_tok


def option_rows(host: ModelHost, prompts: list[str], options: list[list[str]],
                max_length: int = 512) -> tuple[list[list[int]], list[list[list[int]]]]:
    """Token ids of each prompt (special tokens as the tokenizer adds them) and of each of
    its options (no special tokens, so they continue the prompt exactly). A prompt that
    leaves its longest option no room within ``max_length`` (or the model's context) keeps
    its end, with a warning; an option that alone does not fit is refused."""
    limit = token_limit(host, max_length) or max_length
    ctx, opts, cut = [], [], 0
    for p, os_ in zip(prompts, options, strict=True):
        o_ids = [encode(host, o, special=False) for o in os_]
        if not all(o_ids):
            raise ValueError(f"empty option after prompt {p[:60]!r}")
        longest = max(len(o) for o in o_ids)
        if longest >= limit:
            raise ValueError(f"an option of prompt {p[:60]!r} has {longest} tokens, more than "
                             f"the scoring limit {limit} (max_length or the model's context)")
        ids = encode(host, p)
        cut += len(ids) > limit - longest
        ctx.append(ids[-(limit - longest):])  # keep the prompt's end
        opts.append(o_ids)
    if cut:
        log.warning("%d of %d prompts leave their options no room within %d tokens (the "
                    "scoring limit or the model's context): their start was dropped", cut,
                    len(prompts), limit)
    return ctx, opts


@torch.inference_mode()
def option_logprobs(
    host: ModelHost, prompts: list[str], options: list[list[str]], edits: Edits = (None,),
    positions: str = "all", batch_size: int = 16, max_length: int = 512,
) -> torch.Tensor:
    """Mean per-token log p(option | prompt) of every option of every prompt, (G, n, O) float64.

    Each prompt runs once per edit; its KV cache is repeated for its O options, which then
    run as one batch (instead of O full forwards of prompt + option). Equal to
    ``continuation_logprobs(...) / n_tokens`` on the flattened pairs up to float error.
    Under ``positions="response"`` the edit covers the last prompt token and every option
    token. ``batch_size`` bounds the option rows per forward (prompts per batch =
    batch_size // O, at least one).
    """
    ctx, opts = option_rows(host, prompts, options, max_length)
    n_opt = {len(o) for o in opts}
    if len(n_opt) != 1:
        raise ValueError(f"every prompt needs the same number of options; got {sorted(n_opt)}")
    n_opt = n_opt.pop()
    out = torch.empty(len(edits), len(prompts), n_opt, dtype=torch.float64)
    order = sorted(range(len(ctx)), key=lambda i: len(ctx[i]))
    pad = host.tokenizer.pad_token_id
    kw_pos = host.accepts("position_ids")
    kw_keep = host.accepts("logits_to_keep")
    cache_kw = host.cache_kwarg
    with grouped(host, edits, positions) as group:
        for rows in tiled_batches(len(ctx), len(edits), max(1, batch_size // n_opt), order):
            groups = [g for _, g in rows]
            prefix = [group.with_prompt(g, ctx[i]) for i, g in rows]
            check_context(host, max(len(p) + max(len(o) for o in opts[i])
                                    for p, (i, _) in zip(prefix, rows)),
                          "a prompt with its edit's prompt and its longest option")
            ids, mask, pos = left_pad(prefix, pad, host.device)  # (P, S)
            kwargs = {"position_ids": pos} if kw_pos else {}
            if kw_keep:  # only the last prompt position is read
                kwargs["logits_to_keep"] = 1
            group.set_rows(groups)
            res = host.model(input_ids=ids, attention_mask=mask, use_cache=True, **kwargs)
            first = torch.log_softmax(res.logits[:, -1].float(), -1)  # (P, vocab)
            cache = host.returned_cache(res)
            cache.batch_repeat_interleave(n_opt)  # (P * O) rows, option o of row p at p*O+o
            o_ids = [o for i, _ in rows for o in opts[i]]  # P * O option token lists
            width = max(len(o) for o in o_ids)
            o_tok = torch.full((len(o_ids), width), pad, dtype=torch.long)
            o_mask = torch.zeros((len(o_ids), width), dtype=torch.long)
            for b, o in enumerate(o_ids):  # right-padded: padding comes after every real token
                o_tok[b, : len(o)] = torch.tensor(o)
                o_mask[b, : len(o)] = 1
            o_tok, o_mask = o_tok.to(host.device), o_mask.to(host.device)
            # Token k of an option is predicted by position k-1 of the option forward, the
            # first token by the prompt's last position: the last column is never fed.
            lp_first = first.repeat_interleave(n_opt, 0).gather(1, o_tok[:, :1])  # (P*O, 1)
            lp_rest = o_tok.new_zeros((len(o_ids), width - 1), dtype=torch.float32)
            if width > 1:
                feed = o_tok[:, :-1]  # (P*O, width-1)
                full_mask = torch.cat([mask.repeat_interleave(n_opt, 0), o_mask[:, :-1]], 1)
                start = mask.sum(1).repeat_interleave(n_opt)[:, None]  # (P*O, 1) prompt lengths
                kwargs = {"position_ids": start + torch.arange(width - 1, device=host.device)
                          } if kw_pos else {}
                kwargs[cache_kw] = cache
                group.set_rows([g for g in groups for _ in range(n_opt)])
                group.set_response_start(torch.zeros(len(o_ids), dtype=torch.long))  # all
                try:
                    logits = host.model(input_ids=feed, attention_mask=full_mask,
                                        use_cache=True, **kwargs).logits
                finally:
                    group.set_response_start(None)
                lp_rest = torch.log_softmax(logits.float(), -1).gather(
                    -1, o_tok[:, 1:, None]).squeeze(-1)  # (P*O, width-1)
            tok = torch.cat([lp_first, lp_rest], 1) * o_mask  # (P*O, width)
            mean = (tok.sum(1) / o_mask.sum(1)).double().cpu().view(len(rows), n_opt)
            for b, (i, g) in enumerate(rows):
                out[g, i] = mean[b]
    return out


@torch.inference_mode()
def token_logprobs(
    host: ModelHost, texts: list[str], edits: Edits = (None,), positions: str = "all",
    batch_size: int = 8, max_length: int = 128,
    reduce: Callable[[int, torch.Tensor], object] | None = None,
) -> list[list[object]]:
    """Full next-token log-distributions at every position of each text.

    out[g][i] is ``reduce(i, logp)`` (``logp`` itself when None), where ``logp`` is the
    (len_i - 1, vocab) float32 log-probabilities predicting tokens 1..len_i-1 of text i
    under edit g. Reducing inside the loop keeps memory at one batch of distributions.
    Neutral texts have no prompt, so under ``positions="response"`` every position is edited.
    """
    seqs = keep_ends([encode(host, t) for t in texts], token_limit(host, max_length), "texts")
    out: list[list[torch.Tensor]] = [[None] * len(seqs) for _ in edits]
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    with grouped(host, edits, positions) as group:
        for rows in tiled_batches(len(seqs), len(edits), batch_size, order):
            batch = [seqs[i] for i, _ in rows]
            logits = _forward(host, batch, max(len(s) for s in batch), group,
                              [g for _, g in rows], [0] * len(rows))
            logp = torch.log_softmax(logits, dim=-1).cpu()  # (B, S, vocab)
            for b, (i, g) in enumerate(rows):
                n = len(seqs[i])
                row = logp[b, logp.shape[1] - n : -1]  # (n - 1, vocab)
                out[g][i] = reduce(i, row) if reduce else row
    return out


@torch.inference_mode()
def greedy_generate(
    host: ModelHost, prompts: list[str], edits: Edits = (None,), positions: str = "all",
    max_new_tokens: int = 48, batch_size: int = 8,
) -> list[list[str]]:
    """Greedy replies to already-templated ``prompts`` under each edit: out[g][i]."""
    tok = host.tokenizer
    seqs = [encode(host, p) for p in prompts]
    if seqs:  # refused before any work: truncating a prompt would change the question
        check_context(host, max(len(s) for s in seqs), "a prompt", max_new_tokens)
    out = [[""] * len(prompts) for _ in edits]
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    with grouped(host, edits, positions) as group:
        for rows in tiled_batches(len(seqs), len(edits), batch_size, order):
            batch = [group.with_prompt(g, seqs[i]) for i, g in rows]
            check_context(host, max(len(s) for s in batch), "a prompt with its edit's prompt",
                          max_new_tokens)
            ids, mask, _ = left_pad(batch, tok.pad_token_id, host.device)
            group.set_rows([g for _, g in rows])
            gen = host.model.generate(
                input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                do_sample=False, temperature=None, top_p=None, top_k=None,
                pad_token_id=tok.pad_token_id,
            )
            for (i, g), row in zip(rows, gen[:, ids.shape[1] :]):
                out[g][i] = tok.decode(row, skip_special_tokens=True).strip()
    return out


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
