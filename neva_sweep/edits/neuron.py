"""Inference-time activation edits on selected neurons (forward pre-hooks, no weight updates).

Every rule is one formula with per-neuron terms (s, b, f, t, d) (:class:`Coefficients`)::

    a' = max(a * (1 + s) + b, f)   where the neuron is on: d * (a - t) > 0
    a' = a                         elsewhere (bitwise)

For a selected neuron i of value t with magnitude alpha:

- ``add``:    a += alpha * (mu_t(i) - mu_ref(i))     (b = alpha * delta; always on)
- ``add_sd``: a += alpha * sign(delta(i)) * sd(i)     (b = alpha * sign * sd; always on)
- ``scale``:  a *= 1 + alpha                          (s = alpha; always on)
- ``set``:    a = max(a, alpha * q_t(i)) where a > 0  (f = alpha * q_t; t = 0, d = +1)
- ``gate_neuron``: a += alpha * delta(i) where a is beyond the midpoint
  m(i) = mu_ref(i) + delta(i) / 2 in the direction of delta (b = alpha * delta;
  t = m, d = sign(delta))

"Always on" is t = -inf, d = +1. ``set`` and ``gate_neuron`` are *input-dependent*: a
neuron is edited only in the contexts where its own activation says so. ``set`` raises
an active neuron (a > 0) to at least ``alpha`` times its high quantile on the value's
probes and leaves silent ones silent, so it cannot switch a neuron on everywhere.
``gate_neuron`` pushes a neuron along its mean difference only where its activation
already sits on the value's side of the midpoint between the value's mean and the
reference's: the push lands on value-like contexts and leaves the others alone.

``add_sd`` moves every neuron by ``alpha`` of its own standard deviation on the probes
(pooled over the value and its reference), so one magnitude means a comparable push on
every neuron and every model, whatever the scale of its activations. Anti-specific
neurons (negative score, from sign-aware selection) are damped: ``add``, ``add_sd`` and
``gate_neuron`` move them down by construction (their delta is negative; ``gate_neuron``
where they sit below the midpoint), ``scale`` divides them by 1 + alpha; ``set`` only
raises and refuses them.

Each rule is registered once in :data:`RULES` with its formula.

Positions: ``all`` tokens, or ``response``: the last prompt token and every generated
token. A magnitude of 0 leaves the activations bitwise untouched (the edit is masked out).

Edits are kept as tensors so that different rows of one batch can carry different edits
(several sweep trials in one forward pass): ``row_groups[b]`` picks the edit of row b,
-1 meaning "no edit".

Gated edits (``gate``, neva_sweep/neurons/gate.py) scale each row's edit by its value relevance
g in [0, 1]: a' = a + g (rule(a) - a), bitwise a at g = 0 and rule(a) at g = 1 (and
bitwise a wherever the rule's condition is off).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields
from typing import ClassVar

import torch

from ..config import DEFAULT_MAGNITUDE, DEFAULT_RULE
from ..export import batch_shape, position_mask, write_neurons
from ..models.host import ModelHost, module_device
from ..models.identity import ALLOW_HINT, check_model
from ..neurons.gate import Gate, GatePass, is_suspended
from ..neurons.selection import NeuronMap, ValueNeurons, check_neurons
from ..registry import Registry

POSITIONS = ("all", "response")


@dataclass(frozen=True)
class Coefficients:
    """The per-neuron terms of the one edit formula (see the module docstring)::

        a' = max(a * (1 + scale) + shift, floor)  where direction * (a - threshold) > 0
        a' = a                                    elsewhere

    Each field is a float32 tensor of the same shape: (k,) from a rule, (G + 1, k) per
    layer once compiled, (B, 1, k) per row in the hook. ``threshold = -inf`` with
    ``direction = +1`` is "always on" (the unconditioned rules).
    """

    scale: torch.Tensor
    shift: torch.Tensor
    floor: torch.Tensor
    threshold: torch.Tensor
    direction: torch.Tensor  # +1 (on above the threshold) or -1 (on below it)

    @classmethod
    def of(cls, shape: int | tuple[int, ...], scale: torch.Tensor | None = None,
           shift: torch.Tensor | None = None, floor: torch.Tensor | None = None,
           threshold: torch.Tensor | None = None, direction: torch.Tensor | None = None
           ) -> Coefficients:
        """Terms of ``shape`` (k neurons, or (G + 1, k)); each one left out is the
        identity's (s = b = 0, f = -inf, always on).

        >>> c = Coefficients.of(2, shift=torch.tensor([1.0, 1.0]), threshold=torch.zeros(2))
        >>> a = torch.tensor([-0.5, 0.5])
        >>> torch.where(c.on(a), c.moved(a), a)  # a' = a + 1 where a > 0
        tensor([-0.5000,  1.5000])
        """
        size = (shape,) if isinstance(shape, int) else tuple(shape)

        def fill(x: torch.Tensor | None, value: float) -> torch.Tensor:
            return torch.full(size, value) if x is None else x.float()

        return cls(fill(scale, 0.0), fill(shift, 0.0), fill(floor, -math.inf),
                   fill(threshold, -math.inf), fill(direction, 1.0))

    def conditioned(self) -> torch.Tensor:
        """(same shape) bool: neurons whose edit depends on their own activation."""
        return ~(torch.isneginf(self.threshold) & (self.direction > 0))

    def on(self, a: torch.Tensor) -> torch.Tensor:
        """Where the edit applies: d * (a - t) > 0 as a bool tensor of a's broadcast shape."""
        return torch.where(self.direction > 0, a > self.threshold, a < self.threshold)

    def moved(self, a: torch.Tensor) -> torch.Tensor:
        """max(a (1 + s) + b, f), unconditioned (float32 for float32 or half inputs)."""
        return torch.maximum(a * (1 + self.scale) + self.shift, self.floor)

    def take(self, index) -> Coefficients:
        """The terms at ``index`` of every field (rows of compiled edits, a subset)."""
        return Coefficients(*(getattr(self, f.name)[index] for f in fields(self)))


RuleFn = Callable[[ValueNeurons, float], Coefficients]
RULES: Registry[RuleFn] = Registry("edit rule")
"""Edit rules: ``RULES[name](neurons, alpha)`` gives the :class:`Coefficients` (k,) of
a' = max(a * (1 + s) + b, f) where d * (a - t) > 0, else a."""


@RULES.add("add")
def add_rule(neurons: ValueNeurons, alpha: float) -> Coefficients:
    """a += alpha * (mu_t - mu_rest)."""
    return Coefficients.of(len(neurons), shift=alpha * neurons.mean_diff.float())


@RULES.add("add_sd")
def add_sd_rule(neurons: ValueNeurons, alpha: float) -> Coefficients:
    """a += alpha * sign(mu_t - mu_ref) * sd: alpha standard deviations per neuron."""
    if neurons.std is None:
        raise ValueError("rule add_sd needs the neurons' standard deviations, which neuron "
                         "maps saved by older versions lack; select the neurons again")
    shift = alpha * torch.sign(neurons.mean_diff.float()) * neurons.std.float()
    return Coefficients.of(len(neurons), shift=shift)


@RULES.add("scale")
def scale_rule(neurons: ValueNeurons, alpha: float) -> Coefficients:
    """a *= 1 + alpha; anti-specific neurons (score < 0): a /= 1 + alpha."""
    k = len(neurons)
    anti = neurons.score.float() < 0
    # 1 + s = 1 / (1 + alpha) for alpha >= 0; |alpha| keeps a negative magnitude finite
    scale = torch.where(anti, torch.full((k,), -alpha / (1.0 + abs(alpha))),
                        torch.full((k,), alpha))
    return Coefficients.of(k, scale=scale)


ONE_SIDED_RULES = frozenset({"set"})
"""Rules that only raise activations: they refuse anti-specific neurons (polarity=both)."""


@RULES.add("set")
def set_rule(neurons: ValueNeurons, alpha: float) -> Coefficients:
    """a = max(a, alpha * q_t) where the neuron is active (a > 0); a elsewhere."""
    if (neurons.score.float() < 0).any():
        raise ValueError("rule set only raises activations; anti-specific neurons "
                         "(polarity=both) need rule add, add_sd, scale or gate_neuron "
                         "(edit.rule)")
    k = len(neurons)
    return Coefficients.of(k, floor=alpha * neurons.quantile.float(), threshold=torch.zeros(k))


@RULES.add("gate_neuron")
def gate_neuron_rule(neurons: ValueNeurons, alpha: float) -> Coefficients:
    """a += alpha * (mu_t - mu_ref) where a is beyond the midpoint mu_ref + (mu_t - mu_ref) / 2
    in the direction of mu_t - mu_ref; a elsewhere."""
    if neurons.mean_ref is None:
        raise ValueError("rule gate_neuron needs the neurons' reference means (mean_ref), "
                         "which neuron maps saved by older versions lack; select the neurons "
                         "again")
    delta = neurons.mean_diff.float()
    direction = torch.where(delta < 0, -1.0, 1.0)
    return Coefficients.of(len(neurons), shift=alpha * delta,
                           threshold=neurons.mean_ref.float() + delta / 2, direction=direction)


def check_positions(positions: str) -> str:
    if positions not in POSITIONS:
        raise KeyError(f"unknown edit positions {positions!r} (edit.positions); valid "
                       f"choices: {', '.join(POSITIONS)}")
    return positions


class HookedEdit:
    """Mixin of edit kinds installed as hooks of one :class:`RowEditor` subclass
    (``editor``, set once that class exists): ``install`` builds it for G edits."""

    editor: ClassVar[type[RowEditor]]

    @classmethod
    def install(cls, host: ModelHost, edits: Sequence, row_groups: torch.Tensor,
                positions: str = "all") -> RowEditor:
        return cls.editor(host, edits, row_groups, positions)


@dataclass(frozen=True)
class NeuronEdit(HookedEdit):
    """One neuron edit: the neurons of one value, a rule and a magnitude.

    ``positions`` (optional) is where the edit was meant to apply (a sweep trial's
    ``positions``); :func:`neva_sweep.edits.apply` uses it when not told otherwise.
    Installing it on a model other than ``neurons.model`` raises unless
    ``allow_other_model`` (see :mod:`neva_sweep.models.identity`). ``gate`` (optional)
    scales each row's edit by its value relevance (:mod:`neva_sweep.neurons.gate`).
    """

    neurons: ValueNeurons
    rule: str = DEFAULT_RULE
    magnitude: float = DEFAULT_MAGNITUDE
    positions: str | None = None
    allow_other_model: bool = False
    gate: Gate | None = None

    kind: ClassVar[str] = "neurons"
    prefix: ClassVar[str] = ""  # no token prefix: the edit is hooks

    def __post_init__(self) -> None:
        if self.rule not in RULES:
            raise KeyError(f"unknown edit rule {self.rule!r} (edit.rule); valid choices: "
                           f"{', '.join(RULES)}")
        if not math.isfinite(self.magnitude):
            raise ValueError(
                f"edit magnitude must be finite (edit.magnitude), got {self.magnitude}"
            )
        if len(self.neurons) == 0:
            raise ValueError("the edit has no selected neurons; raise edit.sparsity or check "
                             "the value's probes")
        negative = (self.neurons.layer < 0) | (self.neurons.index < 0)
        if negative.any():  # the widths are checked against the model at install
            i = int(negative.nonzero()[0])
            raise ValueError(f"neuron edit: neuron (layer {int(self.neurons.layer[i])}, index "
                             f"{int(self.neurons.index[i])}) is negative; ids start at 0")
        if self.positions is not None:
            check_positions(self.positions)

    @property
    def n_neurons(self) -> int:
        return len(self.neurons)

    def coefficients(self) -> Coefficients:
        """The (k,) terms of this edit's formula (:class:`Coefficients`)."""
        return RULES[self.rule](self.neurons, float(self.magnitude))

    def describe(self) -> dict:
        return {"kind": self.kind, "rule": self.rule, "magnitude": self.magnitude,
                "n_neurons": self.n_neurons,
                **(self.gate.describe() if self.gate is not None else {})}

    def title(self) -> str:
        gated = ", context-gated" if self.gate is not None else ""
        return f"{self.n_neurons} neurons, {self.rule} x{self.magnitude:g}{gated}"



EditSpec = NeuronEdit  # the former name, kept for scripts


@dataclass
class _LayerEdit:
    """Edits of one layer for G groups, over the union of their local neuron indices."""

    idx: torch.Tensor  # (k,) local neuron indices in this shard
    coef: Coefficients  # each (G + 1, k); the last row is the "no edit" group
    active: torch.Tensor  # (G + 1, k) bool
    conditioned: bool  # some edit here depends on the activation (else the hook skips on())


def compile_edits(host: ModelHost, specs: Sequence[NeuronEdit]) -> dict[int, _LayerEdit]:
    """Per-layer edit tensors for ``specs``, restricted to the neurons this host holds,
    each on the device of the site it edits."""
    per_layer: dict[int, list[tuple[int, torch.Tensor, torch.Tensor, Coefficients]]] = {}
    for g, spec in enumerate(specs):
        if spec.magnitude == 0.0:
            continue
        coef = spec.coefficients()
        for layer in spec.neurons.layer.unique().tolist():
            start, stop = host.neuron_slices[layer]
            sel = (spec.neurons.layer == layer) & (spec.neurons.index >= start) & (
                spec.neurons.index < stop)
            if sel.any():
                local = spec.neurons.index[sel] - start
                per_layer.setdefault(layer, []).append((g, local, sel, coef))
    out = {}
    for layer, items in per_layer.items():
        device = module_device(host.sites[layer])  # its own device under model.device_map
        idx = torch.cat([local for _, local, _, _ in items]).unique()  # (k,) sorted
        n_groups = len(specs) + 1
        table = Coefficients.of((n_groups, idx.numel()))  # the identity, filled per group
        active = torch.zeros(n_groups, idx.numel(), dtype=torch.bool)
        for g, local, sel, coef in items:
            col = torch.searchsorted(idx, local)
            for f in fields(table):
                getattr(table, f.name)[g, col] = getattr(coef, f.name)[sel]
            active[g, col] = True
        conditioned = bool((table.conditioned() & active).any())
        table = Coefficients(*(getattr(table, f.name).to(device) for f in fields(table)))
        out[layer] = _LayerEdit(idx.to(device), table, active.to(device), conditioned)
    return out


class RowEditor:
    """Base of installed edit hooks: per-row edit groups and edited positions.

    ``response_start`` (B,) may be set to the padded index of each row's first response
    token when scoring prompt + response in one forward pass with ``positions="response"``.
    Without it, a multi-token forward edits only its last position (the last prompt
    token under left padding) and single-token forwards (generation steps) edit all.
    ``response_start`` also ends the prompt a gated edit's gate pools over.

    Hooks pass their input through while :meth:`suspended` (a gate's pre-pass of the
    unedited model).
    """

    def __init__(self, host: ModelHost, n_groups: int, row_groups: torch.Tensor,
                 positions: str = "all"):
        self.host = host
        self.positions = check_positions(positions)
        self.response_start: torch.Tensor | None = None
        self.n_groups = n_groups
        self.set_rows(row_groups)
        self.handles: list = []
        self.root = getattr(host.model, "module", host.model)
        self.gate_pass: GatePass | None = None

    def install_gates(self, gates: Sequence[Gate | None]) -> None:
        """Scale edit g's rows by the value relevance of ``gates[g]`` (None = ungated); call
        after the edit's own hooks exist. Without any gate nothing is installed."""
        if any(g is not None for g in gates):
            self.gate_pass = GatePass(self.host, self, gates)
            self.handles.append(self.gate_pass.handle)

    def row_gate(self, bsz: int) -> torch.Tensor | None:
        """(B,) float32 gate of every row (1 for ungated edits), or None: nothing gated."""
        return None if self.gate_pass is None else self.gate_pass.rows(bsz)

    def suspended(self) -> bool:
        return is_suspended(self.root)

    def set_rows(self, row_groups: torch.Tensor) -> None:
        """Set the edit of each row of the next batches: (B,) indices into specs, -1 = none."""
        groups = torch.as_tensor(row_groups, dtype=torch.long)
        if ((groups < -1) | (groups >= self.n_groups)).any():
            raise ValueError(f"row_groups must be in -1..{self.n_groups - 1}")
        # The "no edit" group is stored as the last row of every layer's edit tensors.
        self.row_groups = torch.where(groups < 0, self.n_groups, groups).to(self.host.device)

    def rows_of(self, bsz: int) -> torch.Tensor:
        """The (B,) edit group of every row of a batch of ``bsz`` rows."""
        if self.row_groups.numel() not in (1, bsz):
            raise ValueError(f"edit has {self.row_groups.numel()} row groups but the batch "
                             f"has {bsz} rows")
        return self.row_groups.expand(bsz)

    def _position_mask(self, bsz: int, seq: int, device) -> torch.Tensor | None:
        """(B, S, 1) bool of edited positions, or None for all positions."""
        return position_mask(self.positions, self.response_start, bsz, seq, device)

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []


class Editor(RowEditor):
    """Installed neuron edit hooks. Use through :func:`edit` or :func:`edit_rows`."""

    def __init__(self, host: ModelHost, specs: Sequence[NeuronEdit], row_groups: torch.Tensor,
                 positions: str = "all"):
        super().__init__(host, len(specs), row_groups, positions)
        for s in specs:  # before any hook: an edit that does not fit installs nothing
            check_model(s.neurons.model, host, "neuron edit", s.allow_other_model)
            check_neurons(s.neurons, host.layer_sizes, f"neuron edit on {host.name!r}")
        self.layers = compile_edits(host, specs)
        self.handles = [host.sites[layer].register_forward_pre_hook(self._hook(le))
                        for layer, le in self.layers.items()]
        # Some architectures (OPT) flatten (B, S) before the MLP; remember the batch shape.
        self.batch_shape: tuple[int, int] | None = None
        self.handles.append(self.root.register_forward_pre_hook(self._record_shape,
                                                                with_kwargs=True))
        self.install_gates([s.gate if s.magnitude != 0.0 else None for s in specs])

    def _record_shape(self, module, args, kwargs):
        self.batch_shape = batch_shape(args, kwargs) or self.batch_shape

    def _hook(self, le: _LayerEdit):
        def hook(module, args):
            if self.suspended():
                return None
            x = args[0]  # (B, S, I) neuron activations entering the down-projection
            flat = x.dim() == 2  # (B*S, I) in architectures that flatten tokens
            if flat:
                x = x.view(*self.batch_shape, x.shape[-1])
            bsz, seq = x.shape[0], x.shape[1]
            g = self.rows_of(bsz).to(le.idx.device)
            xs = x[..., le.idx]  # (B, S, k)
            coef = le.coef.take((g, None))  # (B, 1, k) each
            new = coef.moved(xs).to(x.dtype)
            mask = le.active[g][:, None, :]  # (B, 1, k)
            if le.conditioned:  # input-dependent rules: only where the neuron is on
                mask = mask & coef.on(xs)  # (B, S, k)
            out = write_neurons(x, le.idx, new, mask, self.row_gate(bsz),
                                self._position_mask(bsz, seq, x.device))
            return (out.view(-1, out.shape[-1]) if flat else out, *args[1:])

        return hook


NeuronEdit.editor = Editor


@contextmanager
def edit_rows(host: ModelHost, specs: Sequence[NeuronEdit], row_groups: torch.Tensor,
              positions: str = "all") -> Iterator[Editor]:
    """Edit row b of every batch with ``specs[row_groups[b]]`` (-1 = unedited).

    >>> import torch, neva_sweep as nv
    >>> host = nv.load_model("tiny-llama")
    >>> nmap = nv.select_neurons(nv.collect_stats(host, nv.load_probes(), progress=False),
    ...                          sparsity=0.05)
    >>> specs = [NeuronEdit(nmap["power"], "add", 2.0),
    ...          NeuronEdit(nmap["security"], "scale", 1.0)]
    >>> with edit_rows(host, specs, torch.tensor([0, 1, -1])):
    ...     out = host.model(**host.tokenize(["a", "b", "c"]))
    """
    editor = Editor(host, specs, row_groups, positions)
    try:
        yield editor
    finally:
        editor.remove()


@contextmanager
def edit(
    host: ModelHost,
    nmap: NeuronMap,
    magnitude: float = DEFAULT_MAGNITUDE,
    rule: str = DEFAULT_RULE,
    positions: str = "all",
    value: str | None = None,
    allow_other_model: bool = False,
) -> Iterator[Editor]:
    """Edit ``value``'s neurons (the map's only value when None) for every row.

    Hooks are installed on entry and always removed on exit, also on exceptions. A map
    built for another model (name or fingerprint, :mod:`neva_sweep.models.identity`) is
    refused unless ``allow_other_model``; every neuron id must exist in ``host`` anyway.

    >>> import neva_sweep as nv
    >>> host = nv.load_model("tiny-llama")
    >>> stats = nv.collect_stats(host, nv.load_probes(), progress=False)
    >>> nmap = nv.select_neurons(stats, value="benevolence", sparsity=0.05)
    >>> with nv.edit(host, nmap, magnitude=2.0, rule="add"):
    ...     out = host.model(**host.tokenize(["I help my neighbour."]))
    """
    if value is None:
        if len(nmap.values) != 1:
            raise ValueError(f"the neuron map holds {len(nmap.values)} values "
                             f"({', '.join(nmap.values)}); pass value=... (edit.value)")
        value = nmap.values[0]
    check_model(nmap.built_for, host, "the neuron map", allow_other_model)
    if list(nmap.layer_sizes) != list(host.layer_sizes) and not allow_other_model:
        raise ValueError(f"neuron map layer sizes {nmap.layer_sizes[:3]}... do not match model "
                         f"{host.name} ({host.layer_sizes[:3]}...); it was built for another "
                         f"model; {ALLOW_HINT}")
    spec = NeuronEdit(nmap[value], rule, float(magnitude), allow_other_model=allow_other_model)
    with edit_rows(host, [spec], torch.zeros(1, dtype=torch.long), positions) as editor:
        yield editor
