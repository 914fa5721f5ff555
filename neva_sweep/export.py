"""Apply an edit exported by neva_sweep (``task=export format=hooks``) to a plain
transformers model. Standalone: this file imports only torch and safetensors (never
neva_sweep), so it can be copied next to your code; ``task=export`` puts a copy beside
the edit file.

Usage::

    import export
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained("HuggingFaceTB/SmolLM2-135M-Instruct")
    tok = AutoTokenizer.from_pretrained("HuggingFaceTB/SmolLM2-135M-Instruct")
    with export.install(model, "runs/export/smollm2-135m-power-neva.safetensors"):
        ids = tok(["What should I do this weekend?"], return_tensors="pt")
        out = model.generate(**ids, max_new_tokens=40, do_sample=False)
    handle = export.install(model, path)  # or without a block: ...; handle.remove()

What the file holds (safetensors; the JSON metadata under the key ``neva_sweep.export``
says which model, value, method, rule, positions and gate):

- a neuron edit: per edited layer L, ``neurons.L.index`` (k,) int64, the MLP neuron ids
  (inputs of the layer's down-projection), and the five per-neuron terms
  ``neurons.L.{scale,shift,floor,threshold,direction}`` (k,) float32 of one formula::

      a' = max(a * (1 + scale) + shift, floor)   where direction * (a - threshold) > 0
      a' = a                                     elsewhere

  installed as a forward pre-hook on the down-projection (its input (B, S, I) is the
  neuron activations);
- a steering-vector edit: ``residual.L`` (H,) float32, already multiplied by its
  coefficient, added to the output hidden state of decoder block L (a forward hook);
- a gate (optional): ``gate.weight``, ``gate.mean``, ``gate.std`` (H,) float32 and
  ``gate.bias`` (1,) float64 of a logistic probe on block ``gate.layer``'s output.
  Each prompt's edit is scaled by g = sigmoid(w . (pool(h) - mean) / std + bias), pool =
  the mean over the prompt's non-pad tokens of the *unedited* model's hidden state there
  (a pre-pass up to that block, about half a forward): a neuron edit becomes
  a' = a + g (rule(a) - a), a steering vector adds g * v. Generation steps that continue
  from the KV cache reuse the prompt's g.

Positions (``positions`` in the metadata): ``all`` tokens, or ``response``: the last
prompt token and every generated one. Without ``handle.response_start``, a forward of
several tokens edits only its last position (the last prompt token, with left padding)
and a one-token forward (each generation step) edits all of it; so ``generate()`` and a
single prompt forward behave as in neva_sweep. To score a prompt and a response in one
forward, set ``handle.response_start`` to a (B,) tensor of each row's first response
column (padded index): then positions >= response_start - 1 are edited, and the gate
pools over the positions before it. With right padding and no ``response_start`` the
"last position" of a short row is a pad: use left padding, as ``generate()`` wants.

Differences from neva_sweep: none in what is computed (the same float32 formula, the
same masks; tests check logits within 1e-5 and equal greedy tokens). neva_sweep can run
several edits in one batch (one per row); a handle applies its one edit to every row.

The model is checked against the fingerprint the edit was found on (layer count, widths
and every weight's shape: fine-tunes of the same architecture pass); another model
raises unless ``install(..., allow_other_model=True)``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

__all__ = ["ARCHITECTURES", "META_KEY", "EditHandle", "fingerprint", "install", "read"]

META_KEY = "neva_sweep.export"
FORMAT_VERSION = 1

# model_type -> (dotted path from the CausalLM to its list of decoder blocks, dotted path
# from one block to its MLP down-projection): the same table as neva_sweep.models.arch.
ARCHITECTURES: dict[str, tuple[str, str]] = {
    "llama": ("model.layers", "mlp.down_proj"),
    "mistral": ("model.layers", "mlp.down_proj"),
    "qwen2": ("model.layers", "mlp.down_proj"),
    "qwen3": ("model.layers", "mlp.down_proj"),
    "gemma": ("model.layers", "mlp.down_proj"),
    "gemma2": ("model.layers", "mlp.down_proj"),
    "gemma3_text": ("model.layers", "mlp.down_proj"),
    "phi3": ("model.layers", "mlp.down_proj"),
    "gpt2": ("transformer.h", "mlp.c_proj"),  # Conv1D: weight (in, out)
    "gpt_neox": ("gpt_neox.layers", "mlp.dense_4h_to_h"),
    "opt": ("model.decoder.layers", "fc2"),  # fc2 sees (B*S, I): tokens flattened
}
TERMS = ("scale", "shift", "floor", "threshold", "direction")


def read(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The tensors and the metadata dict of an exported edit file."""
    with safe_open(str(path), framework="pt") as f:
        raw = (f.metadata() or {}).get(META_KEY)
        if raw is None:
            raise ValueError(f"{path}: not an edit exported by neva_sweep (no {META_KEY!r} "
                             "metadata); write one with task=export format=hooks")
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    meta = json.loads(raw)
    if meta.get("version", 0) > FORMAT_VERSION:
        raise ValueError(f"{path}: written in export format {meta['version']}, newer than "
                         f"this loader's {FORMAT_VERSION}; copy export.py from the same run")
    return tensors, meta


def _blocks(model: torch.nn.Module) -> tuple[str, list[torch.nn.Module], str]:
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in ARCHITECTURES:
        raise KeyError(f"model_type {model_type!r} ({type(model).__name__}) is not supported; "
                       f"supported: {', '.join(ARCHITECTURES)}")
    layers, site = ARCHITECTURES[model_type]
    return model_type, list(model.get_submodule(layers)), site


def module_device(module: torch.nn.Module) -> torch.device:
    """The device ``module`` computes on: accelerate's execution device when a device map
    dispatched it (its weights may then sit offloaded on ``meta``), else its first
    parameter's (or buffer's) device, else the CPU."""
    hook = getattr(module, "_hf_hook", None)
    for h in getattr(hook, "hooks", [hook]):  # a SequentialHook holds several
        dev = getattr(h, "execution_device", None)
        if dev is not None:
            return torch.device(dev)
    for t in module.parameters():
        return t.device
    for t in module.buffers():
        return t.device
    return torch.device("cpu")


def _width(site: torch.nn.Module) -> int:
    """Neurons entering a down-projection (GPT-2's Conv1D keeps its weight as (in, out))."""
    if isinstance(site, torch.nn.Linear):
        return site.in_features
    return site.weight.shape[0]


def fingerprint(model: torch.nn.Module) -> str:
    """12 hex digits of SHA-256 over the architecture's sizes and every weight's shape: the
    same as neva_sweep's (``neva_sweep.models.identity.fingerprint``)."""
    _, blocks, site = _blocks(model)
    cfg = model.config
    arch = {
        "model_type": cfg.model_type,
        "n_layers": len(blocks),
        "hidden_size": getattr(cfg, "hidden_size", None),
        "mlp_widths": [_width(b.get_submodule(site)) for b in blocks],
        "vocab_size": getattr(cfg, "vocab_size", None),
        "shapes": [[name, list(p.shape)] for name, p in model.named_parameters()],
    }
    blob = json.dumps(arch, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


class _Stop(Exception):  # noqa: N818 (control flow: the gate's pre-pass has its hidden state)
    pass


def continues_cache(kwargs: dict) -> bool:
    """Does this forward continue from a filled KV cache (a generation step, options)?"""
    for key in ("past_key_values", "cache"):
        cache = kwargs.get(key)
        if cache is None:
            continue
        if hasattr(cache, "get_seq_length"):
            if cache.get_seq_length() > 0:
                return True
        elif len(cache) > 0:  # a legacy tuple of per-layer tensors
            return True
    pos = kwargs.get("cache_position")
    return pos is not None and pos.numel() > 0 and int(pos.reshape(-1)[0]) > 0


def position_mask(positions: str, response_start: torch.Tensor | None, bsz: int, seq: int,
                  device) -> torch.Tensor | None:
    """(B, S, 1) bool of the positions an edit applies to, or None for all of them.

    ``positions="response"``: from the last prompt token on when ``response_start`` (B,)
    gives each row's first response token, else the last position only (a generation
    step, S = 1, is all response)."""
    if positions == "all":
        return None
    pos = torch.arange(seq, device=device)
    if response_start is not None:
        first = (response_start.to(device) - 1).clamp(min=0)  # last prompt token
        return (pos[None, :] >= first[:, None])[:, :, None]
    if seq == 1:
        return None
    return (pos == seq - 1)[None, :, None].expand(bsz, seq, 1)


def add_gated(h: torch.Tensor, delta: torch.Tensor, gate: torch.Tensor | None,
              pos: torch.Tensor | None) -> torch.Tensor:
    """h + g * delta at the edited positions: h (B, S, H), delta (B or 1, 1, H), gate (B,)
    or None (ungated, g = 1), pos (B, S, 1) bool or None (every position). A row with
    g = 0 keeps h bitwise."""
    gb = None
    if gate is not None:  # g * delta; exactly delta at g = 1
        gb = gate.to(h.device)[:, None, None]  # (B, 1, 1)
        delta = delta * gb.to(h.dtype)
    new = h + (delta if pos is None else delta * pos)
    return new if gb is None else torch.where(gb > 0, new, h)


def batch_shape(args: tuple, kwargs: dict) -> tuple[int, int] | None:
    """(B, S) of a model forward's input ids or embeddings, None when it has neither."""
    ids = kwargs.get("input_ids", args[0] if args else None)
    if ids is None:
        ids = kwargs.get("inputs_embeds")
    return None if ids is None else (ids.shape[0], ids.shape[1])


def model_inputs(args: tuple, kwargs: dict) -> dict[str, torch.Tensor]:
    """The tensors a model forward was called with (ids or embeddings, mask, positions)."""
    inputs = {k: kwargs[k] for k in ("input_ids", "inputs_embeds", "attention_mask",
                                     "position_ids") if kwargs.get(k) is not None}
    if args and "input_ids" not in inputs:
        inputs["input_ids"] = args[0]
    return inputs


def write_neurons(x: torch.Tensor, idx: torch.Tensor, new: torch.Tensor, mask: torch.Tensor,
                  gate: torch.Tensor | None, pos: torch.Tensor | None) -> torch.Tensor:
    """x (B, S, I) with neurons ``idx`` (k,) set to ``new`` (B, S, k) where ``mask``
    (broadcast to (B, S, k)) and ``pos`` (B, S, 1) hold; a gate (B,) blends each row:
    a' = a + g (rule(a) - a), exactly rule(a) at g = 1, the input itself bitwise at g = 0."""
    xs = x[..., idx]  # (B, S, k)
    if pos is not None:
        mask = mask & pos
    if gate is not None:
        gb = gate.to(x.device)[:, None, None]  # (B, 1, 1)
        part = (xs.float() + gb * (new.float() - xs.float())).to(x.dtype)
        new = torch.where(gb >= 1, new, part)
        mask = mask & (gb > 0)
    out = x.clone()
    out[..., idx] = torch.where(mask, new, xs)
    return out


class EditHandle:
    """An installed edit: ``remove()`` takes its hooks off (also on leaving a ``with``
    block). ``response_start`` (B,), optional: see the module docstring. ``meta``: the
    file's metadata."""

    def __init__(self, model: torch.nn.Module, tensors: dict[str, torch.Tensor],
                 meta: dict[str, Any]):
        self.meta = meta
        self.positions = meta["positions"]
        if self.positions not in ("all", "response"):
            raise ValueError(f"unknown positions {self.positions!r} in the edit file")
        self.response_start: torch.Tensor | None = None
        self.root = getattr(model, "module", model)
        _, blocks, site = _blocks(self.root)
        self._suspended = False  # inside the gate's pre-pass: hooks pass through
        self._batch_shape: tuple[int, int] | None = None
        self._gate_values: torch.Tensor | None = None  # (B,) of the last prompt forward
        self.handles: list = [self.root.register_forward_pre_hook(self._record_shape,
                                                                  with_kwargs=True)]
        layers = sorted({int(k.split(".")[1]) for k in tensors
                         if k.startswith(("neurons.", "residual."))})
        bad = [i for i in layers if not 0 <= i < len(blocks)]
        if bad:
            raise ValueError(f"the edit reaches layer {bad[0]} but the model has "
                             f"{len(blocks)} blocks")
        for layer in layers:
            if f"neurons.{layer}.index" in tensors:
                module = blocks[layer].get_submodule(site)
                device = module_device(module)
                idx = tensors[f"neurons.{layer}.index"].long().to(device)
                if int(idx.max()) >= _width(module):
                    raise ValueError(f"the edit's neuron {int(idx.max())} of layer {layer} is past "
                                     f"the layer's {_width(module)} neurons")
                terms = {t: tensors[f"neurons.{layer}.{t}"].float().to(device) for t in TERMS}
                conditioned = bool((~(torch.isneginf(terms["threshold"])
                                      & (terms["direction"] > 0))).any())
                self.handles.append(module.register_forward_pre_hook(
                    self._neuron_hook(idx, terms, conditioned)))
            if f"residual.{layer}" in tensors:
                device = module_device(blocks[layer])
                add = tensors[f"residual.{layer}"].float().to(device)  # (H,)
                self.handles.append(blocks[layer].register_forward_hook(self._residual_hook(add)))
        self.gate = None
        if meta.get("gate"):
            layer = int(meta["gate"]["layer"])
            if not 0 <= layer < len(blocks):
                raise ValueError(f"the edit's gate reads block {layer} but the model has "
                                 f"{len(blocks)}")
            self.gate = {"layer": layer, "block": blocks[layer],
                         **{k: tensors[f"gate.{k}"] for k in ("weight", "mean", "std")},
                         "bias": float(tensors["gate.bias"][0])}
            self.handles.append(self.root.register_forward_pre_hook(self._gate_hook,
                                                                    with_kwargs=True))

    # -- which rows and positions ---------------------------------------------------------
    def _record_shape(self, module, args, kwargs):
        self._batch_shape = batch_shape(args, kwargs) or self._batch_shape

    def _position_mask(self, bsz: int, seq: int, device) -> torch.Tensor | None:
        return position_mask(self.positions, self.response_start, bsz, seq, device)

    def _row_gate(self, bsz: int) -> torch.Tensor | None:
        """(B,) float32 g of every row, or None when the edit is not gated."""
        if self.gate is None:
            return None
        values = self._gate_values
        if values is None:
            raise RuntimeError("gated edit: a forward continued from a KV cache before any "
                               "prompt forward computed the gate")
        if values.shape[0] != bsz:  # k candidates per prompt (beams, num_return_sequences)
            if bsz % values.shape[0]:
                raise ValueError(f"gated edit: a forward of {bsz} rows continues a prompt "
                                 f"forward of {values.shape[0]}")
            values = values.repeat_interleave(bsz // values.shape[0])
        return values

    # -- the gate's pre-pass --------------------------------------------------------------
    @torch.no_grad()
    def _gate_hook(self, module, args, kwargs):
        if self._suspended or continues_cache(kwargs):
            return None
        inputs = model_inputs(args, kwargs)
        x = inputs.get("input_ids", inputs.get("inputs_embeds"))
        bsz, seq = x.shape[0], x.shape[1]
        seen: list[torch.Tensor] = []

        def capture(module, args, output):
            seen.append(output[0] if isinstance(output, tuple) else output)
            raise _Stop

        handle = self.gate["block"].register_forward_hook(capture)
        self._suspended = True
        try:
            self.root(use_cache=False, **inputs)  # the unedited model, up to the gate block
        except _Stop:
            pass
        finally:
            self._suspended = False
            handle.remove()
        hidden = seen[0]  # (B, S, H)
        mask = inputs.get("attention_mask")
        mask = (torch.ones(bsz, seq, dtype=torch.bool, device=x.device) if mask is None
                else mask.bool())
        if self.response_start is not None:  # pool over the prompt only
            cols = torch.arange(seq, device=mask.device)
            prompt = mask & (cols[None, :] < self.response_start.to(mask.device)[:, None])
            mask = torch.where(prompt.any(1, keepdim=True), prompt, mask)
        m = mask.to(hidden.device, torch.float32)[..., None]  # (B, S, 1)
        pooled = (hidden.float() * m).sum(1) / m.sum(1).clamp(min=1)  # (B, H)
        g = self.gate
        z = (pooled - g["mean"].to(pooled.device)) / g["std"].to(pooled.device)
        self._gate_values = torch.sigmoid(z @ g["weight"].to(pooled.device) + g["bias"])
        return None

    # -- the edits ------------------------------------------------------------------------
    def _neuron_hook(self, idx: torch.Tensor, c: dict[str, torch.Tensor], conditioned: bool):
        def hook(module, args):
            if self._suspended:
                return None
            x = args[0]  # (B, S, I) neuron activations entering the down-projection
            flat = x.dim() == 2  # (B*S, I) in architectures that flatten tokens (OPT)
            if flat:
                x = x.view(*self._batch_shape, x.shape[-1])
            bsz, seq = x.shape[0], x.shape[1]
            xs = x[..., idx]  # (B, S, k)
            new = torch.maximum(xs * (1 + c["scale"]) + c["shift"], c["floor"]).to(x.dtype)
            mask = torch.ones(1, 1, idx.numel(), dtype=torch.bool, device=x.device)
            if conditioned:  # only where the neuron is on: direction * (a - threshold) > 0
                mask = mask & torch.where(c["direction"] > 0, xs > c["threshold"],
                                          xs < c["threshold"])
            out = write_neurons(x, idx, new, mask, self._row_gate(bsz),
                                self._position_mask(bsz, seq, x.device))
            return (out.view(-1, out.shape[-1]) if flat else out, *args[1:])

        return hook

    def _residual_hook(self, add: torch.Tensor):
        def hook(module, args, output):
            if self._suspended:
                return None
            h = output[0] if isinstance(output, tuple) else output  # (B, S, H)
            bsz, seq = h.shape[0], h.shape[1]
            delta = add[None, None, :].to(h.dtype)  # (1, 1, H)
            new = add_gated(h, delta, self._row_gate(bsz), self._position_mask(bsz, seq, h.device))
            return (new, *output[1:]) if isinstance(output, tuple) else new

        return hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []

    def __enter__(self) -> EditHandle:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def install(model: torch.nn.Module, path: str | Path, allow_other_model: bool = False
            ) -> EditHandle:
    """Install the edit of ``path`` (written by ``task=export format=hooks``) on ``model``,
    a transformers CausalLM of a supported architecture (:data:`ARCHITECTURES`), for every
    row of every forward and ``generate()`` until ``handle.remove()`` (or the end of a
    ``with install(...):`` block).

    A model whose fingerprint differs from the one the edit was found on is refused
    (neuron ids and directions mean nothing in another model) unless
    ``allow_other_model``.
    """
    tensors, meta = read(path)
    root = getattr(model, "module", model)
    here = fingerprint(root)
    if not allow_other_model and meta.get("fingerprint") and meta["fingerprint"] != here:
        raise ValueError(f"{path} was found on model {meta.get('model')!r} (fingerprint "
                         f"{meta['fingerprint']}), not this one (fingerprint {here}); pass "
                         "allow_other_model=True to apply it anyway")
    return EditHandle(root, tensors, meta)
