"""Contrastive stance pairs in the statistics pass: reply-token neuron differences and
answer-letter residual differences.

A stance pair (``neva_sweep/data/pairs.jsonl``, :func:`neva_sweep.data.load_pairs`) holds a
first-person situation and two replies to it in the same topic words: ``pro`` acts on
value t, ``anti`` rejects it. Probe statistics (neurons/stats.py) reward neurons that fire on value
*words*; the pair differences isolate the *stance*, because both replies share the words.

**Reply tokens.** Each pair runs as two texts, ``situation + " " + reply`` for reply in
(pro, anti). For every neuron i we take its mean activation over the reply tokens only,
and the pair's difference d_i = mean_pro - mean_anti. Per value t::

    pair_count[t]         number of t's pairs                         (V,)   float64
    pair_sum[t, i]        sum over t's pairs of d_i                   (V, N) float64
    pair_sumsq[t, i]      sum over t's pairs of d_i ** 2              (V, N) float64

The reply's tokens are those after the longest common prefix of the tokenisations of the
situation and of the whole text (a token merging across the boundary counts as reply),
counted back from each row's last real token, so the mask holds under either padding.

**Answer letters.** Each pair also runs as the forced-choice question
(:func:`answer_prompt`) in both orders (pro as (A), and pro as (B)), each followed by the
pro reply's letter and by the anti reply's letter. At the letter (each row's last token)
we read the output of every decoder block, as the probe pass reads ``resid_sum``::

    pair_resid_sum[t, l]  sum over t's pairs and both orders of
                          resid_l(pro letter) - resid_l(anti letter)   (V, L, H) float64
    pair_resid_count[t]   number of (pair, order) terms = 2 x pairs    (V,)   float64
    pair_resid_norm[l]    mean L2 norm of resid_l at the letter, over
                          every answer row                             (L,)   float64

so ``pair_resid_sum / pair_resid_count`` is contrastive activation addition's steering
vector in Rimsky et al.'s (2024) A/B form, with the letter order balanced, and the norm
gives it a scale. The question is read the way the forced-choice judge (evaluation/judges/) scores
scenarios: with a chat template the question is the user turn (``host.chat_prompt``) and
``"Answer: (" + letter`` opens the assistant's reply, right where the judge scores its
options; a model without one gets ``question + "\\nAnswer: (" + letter``, the judge's plain
``"...\\nAnswer:"`` form. Vectors read elsewhere would steer a different position.

**Shared prompts.** The two rows of one order differ only in their last token, the letter,
so when every row of a batch tokenises as its prompt's tokens plus one letter token, the
prompts run once (2 rows per pair, not 4) with the key-value cache kept, and the four
letters run as one more token on the cache, each at its own row's position. This reads the
same residuals as the four whole rows (up to float rounding) at about half the answer
rows' tokens, which are most of the pass's. A batch where a letter merges with the
token before it (``"(A"`` as one token), or a model whose cache cannot be repeated per
row, runs its four whole rows instead.

Pair texts are read whole (``stats.max_length`` does not cut them: a cut would drop the
reply or the answer letter); a text longer than the model's context is refused before any
work. Tensor-parallel ranks all read the same pairs: the (V, N) sums hold their own
neurons (stats.concat joins them), the residual fields are the same on every rank.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..data import Pair
from ..models.arch import residual_sites
from ..models.host import ModelHost
from ..values import N_VALUES

# The NeuronStats fields this pass fills (all None in statistics without pairs).
PAIR_FIELDS = ("pair_count", "pair_sum", "pair_sumsq", "pair_resid_sum", "pair_resid_count",
               "pair_resid_norm")
QUESTION = "{situation}\nWhich reply is closer to what you would do?\n(A) {first}\n(B) {second}"


def answer_prompt(host: ModelHost, question: str) -> str:
    """The text the answer letter follows: ``question`` as the chat template's user turn with
    "Answer: (" opening the reply, or ``question + "\\nAnswer: ("`` without a template.

    >>> import neva_sweep as nv
    >>> answer_prompt(nv.load_model("tiny-llama"), "Q?").endswith("assistant\\nAnswer: (")
    True
    """
    if host.has_chat_template:
        return host.chat_prompt(question) + "Answer: ("
    return f"{question}\nAnswer: ("


def answer_texts(host: ModelHost, pair: Pair) -> list[str]:
    """The pair's four answer rows: (pro as A) + pro letter, + anti letter; (pro as B) +
    pro letter, + anti letter. Rows 0::2 end in the pro letter, rows 1::2 in the anti one."""
    first = answer_prompt(host, QUESTION.format(situation=pair.situation, first=pair.pro,
                                                second=pair.anti))
    second = answer_prompt(host, QUESTION.format(situation=pair.situation, first=pair.anti,
                                                 second=pair.pro))
    return [first + "A", first + "B", second + "B", second + "A"]


def reply_texts(pair: Pair) -> list[str]:
    """``[situation + " " + pro, situation + " " + anti]``."""
    return [f"{pair.situation} {pair.pro}", f"{pair.situation} {pair.anti}"]


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of two token id lists.

    >>> common_prefix([1, 5, 7], [1, 5, 9, 2])
    2
    """
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def reply_mask(attention_mask: torch.Tensor, n_reply: torch.Tensor) -> torch.Tensor:
    """The last ``n_reply[b]`` real tokens of each row, (B, S) bool; padding on either side.

    >>> reply_mask(torch.tensor([[1, 1, 1, 0], [0, 1, 1, 1]]), torch.tensor([2, 1])).int()
    tensor([[0, 1, 1, 0],
            [0, 0, 0, 1]], dtype=torch.int32)
    """
    mask = attention_mask.bool()
    from_end = mask.long().flip(1).cumsum(1).flip(1)  # 1 at each row's last real token
    return mask & (from_end <= n_reply.to(mask.device)[:, None])


def last_token(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of each row's last real token, (B,) int64; padding on either side.

    >>> last_token(torch.tensor([[1, 1, 0], [0, 1, 1]])).tolist()
    [1, 2]
    """
    return attention_mask.long().cumsum(1).argmax(1)  # the first position of the maximum


@dataclass(frozen=True)
class PairBatch:
    """Rows of one forward pass over stance pairs.

    ``kind`` "reply": texts alternate pro, anti (two per pair), ``n_reply`` (B,) their
    reply token counts. ``kind`` "answer": four texts per pair (:func:`answer_texts`), and
    when they split, their ``prompts`` and ``letter_ids``. ``labels``: one value index per
    pair.
    """

    kind: str
    texts: list[str]
    labels: list[int]
    n_reply: list[int] | None = None
    # "answer" batches whose rows split as prompt + one letter token (see "Shared prompts"
    # above): the two prompts per pair and each row's letter token id (4 per pair).
    prompts: list[str] | None = None
    letter_ids: list[int] | None = None


def pair_batches(host: ModelHost, pairs: Sequence[Pair], batch_size: int) -> list[PairBatch]:
    """Reply batches (``batch_size // 2`` pairs each), then answer batches (``batch_size //
    4`` pairs each, at least one), pairs ordered by length for little padding. Refuses pair
    texts longer than the model's context."""
    tok = host.tokenizer
    order = sorted(range(len(pairs)), key=lambda k: len(" ".join(reply_texts(pairs[k]))))
    out = []
    per = max(1, batch_size // 2)
    for start in range(0, len(order), per):
        chunk = [pairs[k] for k in order[start : start + per]]
        texts = [t for p in chunk for t in reply_texts(p)]
        full = tok(texts).input_ids
        context = tok([p.situation for p in chunk for _ in range(2)]).input_ids
        n_reply = [len(f) - common_prefix(f, c) for f, c in zip(full, context)]
        check_context(host, texts, [len(f) for f in full])
        out.append(PairBatch("reply", texts, [p.label for p in chunk], n_reply))
    per = max(1, batch_size // 4)
    for start in range(0, len(order), per):
        chunk = [pairs[k] for k in order[start : start + per]]
        texts = [t for p in chunk for t in answer_texts(host, p)]
        full = tok(texts).input_ids
        check_context(host, texts, [len(ids) for ids in full])
        prompts = [t[:-1] for t in texts[0::2]]  # per pair, each order's text before its letter
        letters = split_letters(tok(prompts).input_ids, full)
        out.append(PairBatch("answer", texts, [p.label for p in chunk],
                             prompts=prompts if letters else None, letter_ids=letters))
    return out


def split_letters(prompts: list[list[int]], rows: list[list[int]]) -> list[int] | None:
    """Each row's last token id when every row ``r`` tokenises as ``prompts[r // 2]`` plus
    that one token; None when any does not (the letter merged with the token before it).

    >>> split_letters([[5, 6], [5, 7]], [[5, 6, 1], [5, 6, 2], [5, 7, 2], [5, 7, 1]])
    [1, 2, 2, 1]
    >>> split_letters([[5, 6]], [[5, 6, 1], [5, 9]]) is None
    True
    """
    letters = []
    for r, ids in enumerate(rows):
        prompt = prompts[r // 2]
        if len(ids) != len(prompt) + 1 or ids[:-1] != prompt:
            return None
        letters.append(ids[-1])
    return letters


def check_context(host: ModelHost, texts: list[str], lengths: list[int]) -> None:
    """Refuse a pair text longer than the model's context (it is never cut)."""
    limit = host.context_length
    longest = max(range(len(texts)), key=lengths.__getitem__)
    if limit is not None and lengths[longest] > limit:
        raise ValueError(f"a stance-pair text of {lengths[longest]} tokens exceeds the "
                         f"{limit}-token context of model {host.name!r}: "
                         f"{texts[longest][:80]!r}...; shorten it in the pairs file "
                         "(load_probes(pairs=...))")


class PairAccumulator:
    """Hooks, installed for one batch at a time, that fold stance pairs into the fields of
    :data:`PAIR_FIELDS` (see the module docstring), over ``host``'s own neurons (a
    tensor-parallel shard's slice of every layer)."""

    def __init__(self, host: ModelHost):
        self.host = host
        widths = [b - a for a, b in host.neuron_slices]
        self.offsets = [sum(widths[:i]) for i in range(len(widths))]  # first column per layer
        self.blocks = residual_sites(host.model)
        f64 = dict(dtype=torch.float64)
        self.count = torch.zeros(N_VALUES, **f64)
        self.sum = torch.zeros(N_VALUES, sum(widths), **f64)
        self.sumsq = torch.zeros(N_VALUES, sum(widths), **f64)
        self.resid_sum: torch.Tensor | None = None  # (V, L, H), sized on the first block
        self.resid_count = torch.zeros(N_VALUES, **f64)
        self.norm_sum = torch.zeros(len(self.blocks), **f64)
        self.rows = 0  # answer rows seen
        self.shared_prompts = True  # off once the model's cache cannot be repeated per row

    def step(self, batch: PairBatch, forward_kwargs: dict) -> int:
        """One forward pass over ``batch`` (two for shared prompts); returns its number of
        tokens."""
        labels = torch.tensor(batch.labels)  # (P,)
        if batch.letter_ids is not None and self.shared_prompts:
            n_tokens = self._shared_answers(batch, labels, forward_kwargs)
            if n_tokens is not None:
                return n_tokens
        enc = self.host.tokenize(batch.texts)  # right-padded, never cut
        if batch.kind == "reply":
            mask = reply_mask(enc.attention_mask, torch.tensor(batch.n_reply)).float()
            weights = mask / mask.sum(1, keepdim=True).clamp(min=1)  # (B, S), rows sum to 1
            handles = [site.register_forward_pre_hook(self._reply_hook(o, weights, labels))
                       for o, site in zip(self.offsets, self.host.sites)]
        else:
            at = last_token(enc.attention_mask)  # (B,) the answer letter
            handles = [block.register_forward_hook(self._answer_hook(layer, at, labels))
                       for layer, block in enumerate(self.blocks)]
        try:
            self.host.model(input_ids=enc.input_ids, attention_mask=enc.attention_mask,
                            **forward_kwargs)
        finally:
            for h in handles:
                h.remove()
        if batch.kind == "reply":
            self.count.index_add_(0, labels, torch.ones(len(labels), dtype=torch.float64))
        else:
            self._count_answers(labels, len(batch.texts))
        return int(enc.attention_mask.sum())

    def _count_answers(self, labels: torch.Tensor, rows: int) -> None:
        self.resid_count.index_add_(0, labels, torch.full((len(labels),), 2.0,
                                                          dtype=torch.float64))
        self.rows += rows

    def _shared_answers(self, batch: PairBatch, labels: torch.Tensor,
                        forward_kwargs: dict) -> int | None:
        """The answer rows as their prompts (one pass, cache kept) and then their letters
        (one token each on the cache repeated per row); None, with nothing accumulated,
        when the model's cache cannot be repeated per row."""
        enc = self.host.tokenize(batch.prompts)  # (2P, S) right-padded
        out = self.host.model(input_ids=enc.input_ids, attention_mask=enc.attention_mask,
                              use_cache=True, **forward_kwargs)
        cache = self.host.returned_cache(out)
        if not hasattr(cache, "batch_repeat_interleave"):
            self.shared_prompts = False  # a legacy cache: whole rows from now on
            return None
        cache.batch_repeat_interleave(2)  # (4P, ...): row r reads prompt r // 2
        prompt_mask = enc.attention_mask.repeat_interleave(2, dim=0)  # (4P, S)
        letters = torch.tensor(batch.letter_ids, device=enc.input_ids.device)[:, None]
        mask = torch.cat([prompt_mask, torch.ones_like(letters)], dim=1)  # (4P, S + 1)
        kwargs = {**forward_kwargs, self.host.cache_kwarg: cache}
        if self.host.accepts("position_ids"):
            # Right padding: each letter sits right after its prompt's last real token.
            kwargs["position_ids"] = prompt_mask.sum(1, keepdim=True)  # (4P, 1)
        at = torch.zeros(len(batch.letter_ids), dtype=torch.long)  # the one new position
        handles = [block.register_forward_hook(self._answer_hook(layer, at, labels))
                   for layer, block in enumerate(self.blocks)]
        try:
            self.host.model(input_ids=letters, attention_mask=mask, use_cache=True, **kwargs)
        finally:
            for h in handles:
                h.remove()
        self._count_answers(labels, len(batch.letter_ids))
        return int(enc.attention_mask.sum()) + len(batch.letter_ids)

    def _reply_hook(self, offset: int, weights: torch.Tensor, labels: torch.Tensor):
        def hook(module, args):
            x = args[0]
            bsz, seq = weights.shape
            x = x.reshape(bsz, seq, -1).float()  # (B, S, I); OPT passes (B*S, I)
            means = torch.einsum("bs,bsi->bi", weights.to(x.device), x)  # (B, I) reply means
            diff = (means[0::2] - means[1::2]).double().cpu()  # (P, I) pro - anti
            cols = slice(offset, offset + diff.shape[1])
            self.sum[:, cols].index_add_(0, labels, diff)
            self.sumsq[:, cols].index_add_(0, labels, diff * diff)

        return hook

    def _answer_hook(self, layer: int, at: torch.Tensor, labels: torch.Tensor):
        def hook(module, args, output):
            h = output[0] if isinstance(output, tuple) else output
            bsz = at.shape[0]
            h = h.reshape(bsz, -1, h.shape[-1])  # (B, S, H)
            letter = h[torch.arange(bsz, device=h.device), at.to(h.device)].double().cpu()
            if self.resid_sum is None:
                self.resid_sum = torch.zeros(N_VALUES, len(self.blocks), letter.shape[1],
                                             dtype=torch.float64)
            diff = letter[0::2] - letter[1::2]  # (2P, H): per pair, both orders, pro - anti
            self.resid_sum[:, layer].index_add_(0, labels.repeat_interleave(2), diff)
            self.norm_sum[layer] += letter.norm(dim=-1).sum()

        return hook

    def fields(self) -> dict[str, torch.Tensor]:
        """The accumulated :data:`PAIR_FIELDS`, by name."""
        return dict(pair_count=self.count, pair_sum=self.sum, pair_sumsq=self.sumsq,
                    pair_resid_sum=self.resid_sum, pair_resid_count=self.resid_count,
                    pair_resid_norm=self.norm_sum / max(self.rows, 1))
