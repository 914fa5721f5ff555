"""Context-aware editing: a value-relevance gate that scales each row's edit (ConVA-style).

Value-laden prompts should be steered; neutral text, multiple-choice questions and
lm-eval tasks should be left nearly untouched. A gate is a logistic probe on the
residual stream of the *unedited* model. Two kinds (``edit.gate`` / ``search.space.gates``,
:data:`GATES`): ``context`` (value-laden vs neutral, below) and ``value`` (the edit's own
value vs the other nine, see *The value gate*).

- **Training** (in the statistics pass, :func:`neva_sweep.neurons.stats.collect_stats`): for every
  identify probe and every neutral text of the ``gate`` part of ``data.neutral`` (never the
  ``capability`` part that KL and the classifier judge read), the mean over the text's
  non-pad tokens of the output of one decoder block, the *gate layer*
  ``floor(stats.gate_depth * n_layers)`` (default: half the depth). A logistic
  regression value-laden (any value, label 1) vs neutral (label 0) on those pooled
  vectors: features standardised (mean / std over the training rows), class-balanced
  weights, L2 penalty :data:`GATE_L2` on the weights, fitted by Newton's method in float64
  from zero (deterministic). :class:`Gate` holds the probe.
- **Inference**: row b of a batch gets ``g_b = sigmoid(w . (pool(h_L) - mean) / std + b)``
  in [0, 1], where ``pool`` is the mean of the unedited gate-layer residual over the row's
  *prompt* tokens: non-pad positions before ``response_start`` when it is set (so the
  continuation being scored never sets its own gate, and the ten options of one scenario
  share one gate), all non-pad positions otherwise (and for a row whose prompt is empty,
  such as a neutral text scored from its first token). It is computed by a pre-pass
  (:class:`GatePass`): a forward pre-hook on the model root runs the same model on the
  same inputs with every edit hook suspended and stops at the gate layer (a forward hook
  there raises a private exception carrying the hidden state). Cost: about
  (L + 1) / n_layers of a forward per prompt forward (half a forward at the default
  depth), once per installed edit kind with gated edits. Forwards that continue from a KV
  cache (generation steps, the options of ``option_logprobs``) reuse the gates of the
  prompt forward, repeated row-wise (``repeat_interleave``) when the batch is k times
  larger.
- **Scaling**: a neuron edit becomes a' = a + g (rule(a) - a), a residual edit adds
  g * delta. g = 0 leaves the activations bitwise untouched (masked with ``torch.where``)
  and g = 1 is exactly the ungated edit; ``gate="none"`` installs nothing.

The value gate
--------------
The context gate fires on any value-laden text, whatever the edit's value, and it is
trained against neutral texts of the kind KL is measured on, so its KL ~ 0 is by
construction. The ``value`` gate asks a narrower question: is this prompt about the edit's
*target* value t? One probe per value (:func:`fit_value_gate`), one-vs-rest on the same
pooled rows of the statistics: t's probes, plain and chat-wrapped (label 1), vs the other
nine values' (label 0), with the same fit (standardised, class-balanced, Newton). It sees
*no neutral text*, so what it does on neutral text is not trained in: a KL near zero, and
the mean g on neutral text that :func:`value_gate_accuracy` reports, are findings, not
constructions. It is fitted from ``stats.gate_features`` / ``gate_labels`` on first use and
cached per (statistics object, value) (:func:`value_gate`), so it needs statistics that
hold gate rows (collected with neutral gate texts) but adds nothing to them.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Protocol

import torch

from ..config import GATES
from ..export import continues_cache, model_inputs  # export.py stays standalone
from ..models.arch import residual_sites
from ..values import N_VALUES, VALUES

if TYPE_CHECKING:
    from ..data import ProbeSet
    from ..models.host import ModelHost

__all__ = ["GATES", "GATE_L2", "GATE_VALUE", "NEUTRAL", "Gate", "GatePass", "fit_gate",
           "fit_value_gate", "gate_accuracy", "gate_layer", "gate_of", "pool",
           "pooled_features", "prompt_mask", "row_values", "text_gates", "value_gate",
           "value_gate_accuracy"]

GATE_L2 = 1e-2  # L2 penalty on the standardised weights (mean log-loss + GATE_L2/2 |w|^2)
_NEWTON_STEPS = 50
# Labels of the gate's training rows (stats.gate_labels): a value index 0..9 for a probe,
# NEUTRAL for a neutral text, GATE_VALUE + t for value t's probe wrapped in the chat
# template (a row the gates alone read, never the neuron statistics).
NEUTRAL = N_VALUES
GATE_VALUE = N_VALUES + 1


# --- the probe (pure maths) ---------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Gate:
    """A fitted relevance probe: g = sigmoid(w . (x - mean) / std + bias) on the
    mean-pooled residual x of block ``layer``; ``name`` says what it tells apart."""

    layer: int
    weight: torch.Tensor  # (H,) float32, on standardised features
    bias: float
    mean: torch.Tensor  # (H,) float32 feature mean over the training rows
    std: torch.Tensor  # (H,) float32 feature std (floored, never 0)
    name: str = "context"  # the gate's name in edit.gate / search.space.gates
    value: str | None = None  # the value gate's target value (None for "context")

    def logit(self, pooled: torch.Tensor) -> torch.Tensor:
        """(B, H) pooled residuals -> (B,) float32 logits."""
        x = (pooled.float() - self.mean.to(pooled.device)) / self.std.to(pooled.device)
        return x @ self.weight.to(pooled.device) + self.bias

    def probability(self, pooled: torch.Tensor) -> torch.Tensor:
        """(B, H) pooled residuals -> (B,) g in [0, 1]."""
        return torch.sigmoid(self.logit(pooled))

    def describe(self) -> dict[str, Any]:
        """The gate's part of an edit's record (eval.json ``edit``)."""
        return {"gate": self.name, "gate_layer": self.layer,
                **({"gate_value": self.value} if self.value is not None else {})}

    def tensors(self) -> dict[str, torch.Tensor]:
        """The context probe as safetensors entries (``gate_*``), see :meth:`from_tensors`
        (value gates are never stored: they are refitted from the statistics' rows)."""
        return {"gate_weight": self.weight, "gate_mean": self.mean, "gate_std": self.std,
                "gate_bias": torch.tensor([self.bias], dtype=torch.float64),
                "gate_layer": torch.tensor([self.layer], dtype=torch.int64)}

    @classmethod
    def from_tensors(cls, t: dict[str, torch.Tensor]) -> Gate | None:
        if "gate_weight" not in t:
            return None
        return cls(int(t["gate_layer"][0]), t["gate_weight"].float(), float(t["gate_bias"][0]),
                   t["gate_mean"].float(), t["gate_std"].float())


def gate_layer(n_layers: int, depth: float) -> int:
    """The gate's block: ``floor(depth * n_layers)``, inside 0..n_layers-1.

    >>> gate_layer(30, 0.5), gate_layer(2, 0.5), gate_layer(30, 1.0)
    (15, 1, 29)
    """
    if not 0.0 <= depth <= 1.0:
        raise ValueError(f"stats.gate_depth must be in [0, 1] (a fraction of the model's "
                         f"depth), got {depth}")
    return min(n_layers - 1, math.floor(depth * n_layers))


def fit_gate(features: torch.Tensor, labels: torch.Tensor, layer: int, l2: float = GATE_L2
             ) -> Gate:
    """Logistic probe ``labels`` (1 = value-laden, 0 = neutral) on ``features`` (n, H).

    Standardised features, class-balanced weights (each class weighs half), minimising
    mean weighted log-loss + l2/2 |w|^2 (the bias is not penalised) by Newton's method in
    float64 from zero: deterministic, and converged to the unique optimum.
    """
    with torch.inference_mode(False):  # plain tensors, usable under autograd later
        return _fit(features.clone(), labels.clone(), int(layer), float(l2))


def _fit(features: torch.Tensor, labels: torch.Tensor, layer: int, l2: float) -> Gate:
    y = labels.double()
    n_pos, n_neg = float(y.sum()), float((1 - y).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"the gate needs value-laden and neutral texts; got {n_pos:.0f} value "
                         f"and {n_neg:.0f} neutral (data.neutral needs \"split\": \"gate\" "
                         "records)")
    x = features.double()
    mean = x.mean(0)
    std = x.std(0, unbiased=False).clamp(min=1e-6)
    z = torch.cat([(x - mean) / std, torch.ones(len(x), 1, dtype=x.dtype)], 1)  # (n, H+1)
    sw = torch.where(y > 0, 0.5 / n_pos, 0.5 / n_neg)  # (n,) sums to 1
    reg = torch.full((z.shape[1],), l2, dtype=x.dtype)
    reg[-1] = 0.0  # no penalty on the bias
    theta = torch.zeros(z.shape[1], dtype=x.dtype)
    for _ in range(_NEWTON_STEPS):
        p = torch.sigmoid(z @ theta)
        grad = z.T @ (sw * (p - y)) + reg * theta
        hess = (z.T * (sw * p * (1 - p))) @ z + torch.diag(reg + 1e-12)
        step = torch.linalg.solve(hess, grad)
        theta -= step
        if float(step.abs().max()) < 1e-10:
            break
    return Gate(layer, theta[:-1].float(), float(theta[-1]), mean.float(), std.float())


def row_values(labels: torch.Tensor) -> torch.Tensor:
    """(n,) labels of the gate's training rows -> (n,) int64 value index of each value-laden
    row, plain or chat-wrapped, and -1 for a neutral row.

    >>> row_values(torch.tensor([3, NEUTRAL, GATE_VALUE + 3, GATE_VALUE])).tolist()
    [3, -1, 3, 0]
    """
    labels = labels.long()
    chat = torch.where(labels >= GATE_VALUE, labels - GATE_VALUE, torch.full_like(labels, -1))
    return torch.where(labels < NEUTRAL, labels, chat)


def fit_value_gate(features: torch.Tensor, labels: torch.Tensor, layer: int, value: str,
                   l2: float = GATE_L2) -> Gate:
    """The one-vs-rest probe of ``value``: its rows (label 1) vs the other values' rows
    (label 0) of ``features`` (n, H) with gate labels ``labels`` (n,); neutral rows are left
    out, so the probe's behaviour on neutral text is not trained in. Same fit as
    :func:`fit_gate` (standardised over the value rows, class-balanced, Newton)."""
    t = _value_index(value)
    v = row_values(labels)
    keep = v >= 0  # (n,) the value-laden rows
    y = v[keep] == t
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"the value gate of {value!r} needs gate rows of {value!r} and of "
                         f"other values; the statistics hold {n_pos} and {n_neg} (collect "
                         "them on probes of every value)")
    with torch.inference_mode(False):
        gate = _fit(features[keep].clone(), y.clone(), int(layer), float(l2))
    return replace(gate, name="value", value=value)


def _value_index(value: str | None) -> int:
    if value is None:
        raise ValueError("gate 'value' (edit.gate / search.space.gates) needs the edit's "
                         "target value: gate_of(stats, 'value', value=...); valid choices: "
                         + ", ".join(VALUES))
    if value not in VALUES:
        raise KeyError(f"gate 'value': unknown value {value!r}; valid choices: "
                       f"{', '.join(VALUES)}")
    return VALUES.index(value)


def prompt_mask(attention_mask: torch.Tensor, response_start: torch.Tensor | None
                ) -> torch.Tensor:
    """(B, S) bool: the prompt tokens of each row, non-pad positions before
    ``response_start`` (padded column of the first response token); a row with no such
    position keeps all its non-pad positions."""
    mask = attention_mask.bool()
    if response_start is None:
        return mask
    cols = torch.arange(mask.shape[1], device=mask.device)
    prompt = mask & (cols[None, :] < response_start.to(mask.device)[:, None])
    return torch.where(prompt.any(1, keepdim=True), prompt, mask)


def pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``hidden`` (B, S, H) over the positions of ``mask`` (B, S), (B, H) float32."""
    m = mask.to(hidden.device, torch.float32)[..., None]  # (B, S, 1)
    return (hidden.float() * m).sum(1) / m.sum(1).clamp(min=1)


# --- running the unedited model up to the gate layer -----------------------------------------

_SUSPENDED: set[int] = set()  # id() of model roots whose edit hooks are suspended


def is_suspended(root: torch.nn.Module) -> bool:
    """True inside a gate pre-pass of ``root``: every edit hook passes its input through."""
    return id(root) in _SUSPENDED


@contextmanager
def suspended(root: torch.nn.Module) -> Iterator[None]:
    _SUSPENDED.add(id(root))
    try:
        yield
    finally:
        _SUSPENDED.discard(id(root))


class _GateStop(Exception):  # noqa: N818 (control flow, never seen outside this module)
    """Raised by the hook on the deepest wanted block: the pre-pass has what it needs."""


def hidden_states(model: torch.nn.Module, layers: Sequence[int], **inputs: Any
                  ) -> dict[int, torch.Tensor]:
    """Outputs (B, S, H) of the decoder blocks ``layers`` for ``model(**inputs)``, unedited
    (edit hooks suspended) and without running the blocks past the deepest one."""
    root = getattr(model, "module", model)
    blocks = residual_sites(root)
    seen: dict[int, torch.Tensor] = {}
    last = max(layers)

    def capture(layer: int):
        def hook(module, args, output):
            seen[layer] = output[0] if isinstance(output, tuple) else output
            if layer == last:
                raise _GateStop

        return hook

    handles = [blocks[layer].register_forward_hook(capture(layer)) for layer in set(layers)]
    try:
        with suspended(root):
            root(**inputs)
    except _GateStop:
        pass
    finally:
        for h in handles:
            h.remove()
    if last not in seen:
        raise RuntimeError(f"gate pre-pass: block {last} never ran")
    return seen


class GatePass:
    """Per-row gate values for one installed editor (a :class:`~neva_sweep.edits.neuron.RowEditor`).

    ``gates[g]``: the gate of the editor's edit g (None = ungated, g = 1). A forward
    pre-hook on the model root computes, for every forward that does not continue a KV
    cache, each distinct gate's value for every row (a pre-pass up to the deepest gate
    layer); :meth:`rows` combines them with the rows' edit groups.
    """

    def __init__(self, host: ModelHost, editor: Any, gates: Sequence[Gate | None]):
        self.editor = editor
        self.root = getattr(host.model, "module", host.model)
        self.gates: list[Gate] = list({id(g): g for g in gates if g is not None}.values())
        n_blocks = len(residual_sites(self.root))
        bad = [g.layer for g in self.gates if not 0 <= g.layer < n_blocks]
        if bad:
            raise ValueError(f"gate on layer {bad[0]} but the model has {n_blocks} blocks; the "
                             "statistics were collected on another model")
        index = {id(g): k for k, g in enumerate(self.gates)}
        # (G + 1,) gate of each edit group, -1 = ungated; the last group is "no edit".
        self.group_gate = torch.tensor([index[id(g)] if g is not None else -1 for g in gates]
                                       + [-1], dtype=torch.long)
        self.values: torch.Tensor | None = None  # (K, B) of the last prompt forward
        self.handle = self.root.register_forward_pre_hook(self._hook, with_kwargs=True)

    @torch.no_grad()
    def _hook(self, module, args, kwargs):
        if is_suspended(self.root) or continues_cache(kwargs):
            return None
        inputs = model_inputs(args, kwargs)
        x = inputs.get("input_ids", inputs.get("inputs_embeds"))
        bsz, seq = x.shape[0], x.shape[1]
        hidden = hidden_states(self.root, [g.layer for g in self.gates], use_cache=False,
                               **inputs)
        mask = inputs.get("attention_mask")
        if mask is None:
            mask = torch.ones(bsz, seq, dtype=torch.long, device=x.device)
        mask = prompt_mask(mask, self.editor.response_start)
        # (K, B) on the input's device: under model.device_map the gates' blocks may not be
        self.values = torch.stack([g.probability(pool(hidden[g.layer], mask)).to(x.device)
                                   for g in self.gates])
        return None

    def rows(self, bsz: int) -> torch.Tensor:
        """(B,) float32 gate of each row of the current batch (1 for ungated edits)."""
        if self.values is None:
            raise RuntimeError("gated edit: a forward continued from a KV cache before any "
                               "prompt forward computed the gates")
        values = self.values
        if values.shape[1] != bsz:
            if bsz % values.shape[1]:
                raise ValueError(f"gated edit: a forward continuing from a KV cache has {bsz} "
                                 f"rows, not a multiple of the {values.shape[1]} rows of the "
                                 "prompt forward that set the gates")
            values = values.repeat_interleave(bsz // values.shape[1], 1)
        k = self.group_gate.to(values.device)[self.editor.rows_of(bsz).to(values.device)]
        picked = values.gather(0, k.clamp(min=0)[None, :])[0]  # (B,)
        return torch.where(k >= 0, picked, torch.ones_like(picked))

    def remove(self) -> None:
        self.handle.remove()


# --- building, measuring ----------------------------------------------------------------------


class WithGate(Protocol):
    """What the gate functions read of statistics (:class:`neva_sweep.neurons.stats.NeuronStats`,
    which imports this module: named by its shape, not imported)."""

    gate: Gate | None
    gate_features: torch.Tensor | None  # (n, H) the gates' training rows
    gate_labels: torch.Tensor | None  # (n,) their labels (NEUTRAL, a value, GATE_VALUE + t)
    meta: dict


def gate_of(stats: WithGate, name: str, value: str | None = None) -> Gate | None:
    """The gate ``name`` (``edit.gate``, a method's ``gate`` parameter) from ``stats``;
    ``value`` (the edit's target value) is needed by ``"value"`` and ignored otherwise."""
    if name not in GATES:
        raise KeyError(f"unknown gate {name!r} (edit.gate / search.space.gates); valid "
                       f"choices: {', '.join(GATES)}")
    if name == "none":
        return None
    if name == "value":
        _value_index(value)  # before the statistics: a missing value is the caller's error
    if stats.gate is None:
        raise ValueError(f"gate {name!r} needs statistics with a gate probe, and these have "
                         "none: they were collected without neutral gate texts (data.neutral "
                         "needs records with \"split\": \"gate\"; load_probes(neutral=...)) or "
                         "by an older neva_sweep (delete the cached statistics to recollect)")
    return value_gate(stats, value) if name == "value" else stats.gate


# id(stats) -> value -> (gate_features, gate_labels, the value gate fitted on them)
_VALUE_GATES: dict[int, dict[str, tuple[torch.Tensor, torch.Tensor, Gate]]] = {}


def value_gate(stats: WithGate, value: str) -> Gate:
    """The value gate of ``value`` on ``stats``' gate rows (:func:`fit_value_gate`), fitted
    on first use and cached per (statistics object, value): trials build their edits many
    times, and a fit costs ~0.1-1 s. The entry goes when the statistics object does, and is
    refitted if its gate rows were replaced."""
    cache = _VALUE_GATES.get(id(stats))
    if cache is None:
        cache = _VALUE_GATES[id(stats)] = {}
        weakref.finalize(stats, _VALUE_GATES.pop, id(stats), None)
    x, y = stats.gate_features, stats.gate_labels
    hit = cache.get(value)
    if hit is None or hit[0] is not x or hit[1] is not y:
        hit = cache[value] = (x, y, fit_value_gate(x, y, stats.gate.layer, value))
    return hit[2]


@torch.inference_mode()
def pooled_features(host: ModelHost, texts: Sequence[str], layer: int, batch_size: int = 16,
                    max_length: int = 128) -> torch.Tensor:
    """Mean-pooled unedited residual of block ``layer`` over each text's first
    ``max_length`` tokens, as the statistics pass pools them, (n, H) float32."""
    out = []
    for start in range(0, len(texts), batch_size):
        enc = host.tokenize(list(texts[start:start + batch_size]), max_length=max_length)
        hidden = hidden_states(host.model, [layer], input_ids=enc.input_ids,
                               attention_mask=enc.attention_mask, use_cache=False)[layer]
        out.append(pool(hidden, enc.attention_mask).cpu())
    return torch.cat(out)


def text_gates(host: ModelHost, gate: Gate, texts: Sequence[str], batch_size: int = 16,
               max_length: int = 128) -> torch.Tensor:
    """g of each text pooled whole as one prompt (the gate's own features), (n,) in [0, 1]."""
    return gate.probability(pooled_features(host, texts, gate.layer, batch_size, max_length))


def gate_accuracy(stats: WithGate, host: ModelHost, probes: ProbeSet | None = None,
                  neutral: Sequence[str] | None = None, batch_size: int = 16) -> dict:
    """Held-out accuracy of the stats' gate at threshold 0.5: value-laden texts (default: the
    ``validate`` probes) vs neutral texts (default: the ``capability`` part of the built-in
    neutral file, which the gate never saw). Returns accuracy, balanced accuracy, the recall
    of each class, the mean g of each class, counts and the gate layer; and, for a model
    with a chat template, the same figures with every text wrapped as a user turn
    (``chat``), the form the scenarios and MC questions reach the gate in."""
    from ..data import load_probes, load_records, neutral_split

    gate = gate_of(stats, "context")
    probes = probes if probes is not None else load_probes(split="validate", neutral=False)
    neutral = (list(neutral) if neutral is not None
               else neutral_split(load_records("neutral"), "search"))
    max_length = stats.meta.get("config", {}).get("max_length", 128)

    def scores(value_texts: Sequence[str], neutral_texts: Sequence[str]) -> dict:
        g_val = text_gates(host, gate, value_texts, batch_size, max_length)
        g_neu = text_gates(host, gate, neutral_texts, batch_size, max_length)
        recall_v = float((g_val > 0.5).float().mean())
        recall_n = float((g_neu <= 0.5).float().mean())
        n_v, n_n = len(g_val), len(g_neu)
        return {"accuracy": (recall_v * n_v + recall_n * n_n) / (n_v + n_n),
                "balanced_accuracy": (recall_v + recall_n) / 2, "value_recall": recall_v,
                "neutral_recall": recall_n, "mean_g_value": float(g_val.mean()),
                "mean_g_neutral": float(g_neu.mean()), "n_value": n_v, "n_neutral": n_n}

    out = {"layer": gate.layer, **scores(probes.texts, neutral)}
    if host.has_chat_template:
        out["chat"] = scores([host.chat_prompt(t) for t in probes.texts],
                             [host.chat_prompt(t) for t in neutral])
    return out


def value_gate_accuracy(stats: WithGate, host: ModelHost, probes: ProbeSet | None = None,
                        neutral: Sequence[str] | None = None, batch_size: int = 16) -> dict:
    """Held-out accuracy of every value's value gate at threshold 0.5: value t's probes
    (default: the ``validate`` probes) vs the other values' probes, per value (accuracy,
    balanced accuracy, the recall of each side, mean g of each side, counts) and their
    macro mean (``macro``); and the mean g on neutral texts (default: the ``capability``
    part of the built-in neutral file), reported because the value gate never trained on
    neutral text. With a chat template, the same figures with every text wrapped as a user
    turn (``chat``). A value without validate probes is left out."""
    from ..data import load_probes, load_records, neutral_split

    gates = {v: gate_of(stats, "value", v) for v in VALUES}
    layer = stats.gate.layer
    probes = probes if probes is not None else load_probes(split="validate", neutral=False)
    neutral = (list(neutral) if neutral is not None
               else neutral_split(load_records("neutral"), "search"))
    max_length = stats.meta.get("config", {}).get("max_length", 128)
    labels = torch.tensor(probes.labels, dtype=torch.long)  # (n,) value indices

    def scores(value_texts: Sequence[str], neutral_texts: Sequence[str]) -> dict:
        x = pooled_features(host, value_texts, layer, batch_size, max_length)  # (n, H)
        x_neu = pooled_features(host, neutral_texts, layer, batch_size, max_length)
        per = {}
        for t, v in enumerate(VALUES):
            pos = labels == t
            if not pos.any() or pos.all():
                continue
            g = gates[v].probability(x)  # (n,)
            recall = float((g[pos] > 0.5).float().mean())
            rest = float((g[~pos] <= 0.5).float().mean())
            n_v, n_r = int(pos.sum()), int((~pos).sum())
            per[v] = {"accuracy": (recall * n_v + rest * n_r) / (n_v + n_r),
                      "balanced_accuracy": (recall + rest) / 2, "value_recall": recall,
                      "rest_recall": rest, "mean_g_value": float(g[pos].mean()),
                      "mean_g_rest": float(g[~pos].mean()),
                      "mean_g_neutral": float(gates[v].probability(x_neu).mean()),
                      "n_value": n_v, "n_rest": n_r, "n_neutral": len(x_neu)}
        keys = ("accuracy", "balanced_accuracy", "mean_g_value", "mean_g_rest", "mean_g_neutral")
        macro = {k: sum(r[k] for r in per.values()) / max(len(per), 1) for k in keys}
        return {"per_value": per, "macro": macro}

    out = {"layer": layer, **scores(probes.texts, neutral)}
    if host.has_chat_template:
        out["chat"] = scores([host.chat_prompt(t) for t in probes.texts],
                             [host.chat_prompt(t) for t in neutral])
    return out
