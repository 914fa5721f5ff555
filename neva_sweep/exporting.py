"""``task=export``: a sweep's chosen edit as files that work without neva_sweep.

``python -m neva_sweep task=export run_dir=DIR [value=...] [method=...] format=FORMAT``
loads the edit ``DIR/best_edits.json`` holds for the value and method (as ``task=steer
best_edits=...`` does: same checks, ``rebuild_edits=true`` likewise) and writes into the
task's run directory (``hydra.run.dir``, default ``runs/export``):

- ``format=hooks`` (any hooked edit): ``<model>-<value>-<method>.safetensors`` and a copy
  of :mod:`neva_sweep.export`, a loader that imports only torch and safetensors:
  ``export.install(model, path)`` puts the same edit (formula, positions, gate) on a plain
  transformers model of the same architecture; ``handle.remove()`` takes it off. The file
  layout is described there.
- ``format=weights`` (static edits only): the model with the edit folded into its weights,
  ``<model>-<value>-<method>/`` by ``save_pretrained`` (model and tokenizer), loadable
  with a plain ``AutoModelForCausalLM.from_pretrained`` and nothing else. A neuron edit
  whose rule only adds (``add``, ``add_sd``: a' = a + b) changes the down-projection's
  output by ``W[:, idx] @ b`` whatever the input, so that goes into its bias; a
  steering vector added to a block's output goes into the bias of the same
  down-projection, whose output the block adds to the residual stream. A down-projection
  without a bias gets one only where transformers' config can declare it
  (``mlp_bias=True``, e.g. llama: every MLP linear then has a bias, zeros but the edited
  ones), so the checkpoint loads without custom code; elsewhere (mistral, qwen2, gemma,
  phi3) it is refused. Refused too, naming why: gated edits (the strength depends on
  each prompt), ``positions=response`` (the edit starts after the prompt) and rules that
  depend on the activation (``scale``, ``set``, ``gate_neuron``). Before saving, the
  folded model's logits on a probe text are compared with the hooked edit's.
- ``format=steering_vector`` (steering-vector edits: methods diffmean, caa_pairs):
  ``<stem>.steering_vector.pt``, the arguments of the steering-vectors library's
  ``SteeringVector`` (``SteeringVector(**torch.load(path, weights_only=True))``, then
  ``with sv.apply(model): ...``), and ``<stem>.gguf``, a llama.cpp control vector
  (``llama-cli --control-vector <stem>.gguf``): tensors ``direction.N`` (n_embd,) float32
  for N = 1 .. n_layers - 1 (zeros on blocks the edit leaves alone), keys
  ``controlvector.model_hint`` (the transformers model_type) and
  ``controlvector.layer_count``. llama.cpp adds ``direction.N`` to the output of block N
  counted from 0, the same block index as neva_sweep's, and rejects ``direction.0``: an
  edit of block 0 is refused. Both add the vector times its coefficient at every position
  (prompt included): a ``positions=response`` edit is written with a warning (with
  steering-vectors pass ``min_token_index`` = the prompt length - 1); a gated edit is
  refused.

A prompt edit (method prompt) is its instruction text, which no format holds: the error
gives the text.
"""

from __future__ import annotations

import copy
import json
import logging
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from . import __version__
from .config import ConfigError
from .edits.kind import EditKind
from .export import FORMAT_VERSION, META_KEY, TERMS
from .files import atomic_path
from .models.host import ModelHost
from .registry import Registry

log = logging.getLogger(__name__)

Exporter = Callable[[ModelHost, EditKind, dict, Path], list[Path]]
FORMATS: Registry[Exporter] = Registry("export format")
"""``format=`` of task=export: ``FORMATS[name](host, edit, entry, out)`` writes the files of
the best_edits ``entry``'s ``edit`` into ``out`` and returns their paths."""

PROBE_TEXT = "I help my neighbour carry heavy boxes up the stairs."  # weights' self-check


def best_edits_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / "best_edits.json"


def export_edit(host: ModelHost, edit: EditKind, entry: dict[str, Any], fmt: str, out: Path
                ) -> list[Path]:
    """Write ``edit`` (the best_edits ``entry``'s, on ``host``) in format ``fmt`` into
    ``out``; returns the written paths. ``format=weights`` changes ``host.model`` in place."""
    if fmt not in FORMATS:
        raise ConfigError(f"format: unknown export format {fmt!r}; valid choices: "
                          f"{', '.join(FORMATS.names())}")
    if edit.kind == "prompt":
        raise ConfigError(f"format: the {_label(entry)} edit is a prompt (an instruction "
                          "text, not a change inside the model), which no format holds; "
                          f"prepend it to your prompts yourself: {edit.prefix!r}")
    out.mkdir(parents=True, exist_ok=True)
    return FORMATS[fmt](host, edit, entry, out)


def _label(entry: dict[str, Any]) -> str:
    return f"{entry['model']}/{entry['value']}/{entry['method']}"


def _stem(entry: dict[str, Any]) -> str:
    """``<model>-<value>-<method>``, safe as a file name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", f"{entry['model']}-{entry['value']}-"
                                             f"{entry['method']}")


def _active(edit: Any) -> bool:
    """Whether the edit changes anything (a zero dose installs no hooks and no gate)."""
    dose = edit.magnitude if edit.kind == "neurons" else edit.coefficient
    return float(dose) != 0.0


def metadata(host: ModelHost, edit: Any, entry: dict[str, Any]) -> dict[str, Any]:
    """What the exported files record about the edit and where it comes from."""
    gate = edit.gate if _active(edit) else None
    return {"version": FORMAT_VERSION, "kind": edit.kind, "model": host.name,
            "fingerprint": host.meta.get("fingerprint"),
            "model_type": getattr(host.model.config, "model_type", None),
            "value": entry["value"], "method": entry["method"],
            "positions": edit.positions or "all", "edit": edit.describe(),
            "gate": None if gate is None else {"layer": gate.layer, "name": gate.name,
                                               "value": gate.value},
            "params": entry.get("params"), "study": entry.get("study"),
            "trial": entry.get("trial"), "neva_sweep": __version__}


# -- format=hooks ----------------------------------------------------------------------------
def neuron_tensors(edit: Any) -> dict[str, torch.Tensor]:
    """Per edited layer L: ``neurons.L.index`` (k,) int64 in increasing order and the five
    terms of :class:`~neva_sweep.edits.neuron.Coefficients`, ``neurons.L.<term>`` (k,) float32."""
    if not _active(edit):  # as compile_edits: a zero magnitude edits nothing
        return {}
    coef, n = edit.coefficients(), edit.neurons
    out = {}
    for layer in n.layer.unique().tolist():
        sel = (n.layer == layer).nonzero().flatten()
        sel = sel[n.index[sel].argsort()]
        out[f"neurons.{layer}.index"] = n.index[sel].long().contiguous()
        for term in TERMS:
            out[f"neurons.{layer}.{term}"] = getattr(coef, term)[sel].float().contiguous()
    return out


def residual_tensors(edit: Any) -> dict[str, torch.Tensor]:
    """Per edited block L: ``residual.L`` (H,) float32, the vector times its coefficient
    (computed as the installed edit computes it)."""
    return {f"residual.{layer}": (edit.coefficient * edit.vectors[i]).float().contiguous()
            for i, layer in enumerate(edit.layers)}


KIND_TENSORS: dict[str, Callable[[Any], dict[str, torch.Tensor]]] = {
    "neurons": neuron_tensors, "residual": residual_tensors}


def gate_tensors(edit: Any) -> dict[str, torch.Tensor]:
    """The gate's probe: ``gate.{weight,mean,std}`` (H,) float32, ``gate.bias`` (1,)
    float64 (its block is in the metadata); none for an ungated or zero-dose edit."""
    gate = edit.gate
    if gate is None or not _active(edit):
        return {}
    return {"gate.weight": gate.weight.float().contiguous(),
            "gate.mean": gate.mean.float().contiguous(),
            "gate.std": gate.std.float().contiguous(),
            "gate.bias": torch.tensor([gate.bias], dtype=torch.float64)}


@FORMATS.add("hooks")
def write_hooks(host: ModelHost, edit: Any, entry: dict, out: Path) -> list[Path]:
    """``<stem>.safetensors`` (see :mod:`neva_sweep.export`) and ``export.py`` beside it."""
    from safetensors.torch import save_file

    tensors = {**KIND_TENSORS[edit.kind](edit), **gate_tensors(edit)}
    meta = {"format": "hooks", **metadata(host, edit, entry)}
    path = out / f"{_stem(entry)}.safetensors"
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={META_KEY: json.dumps(meta)})
    loader = out / "export.py"
    shutil.copyfile(Path(__file__).with_name("export.py"), loader)
    return [path, loader]


# -- format=weights --------------------------------------------------------------------------
def static_problem(edit: Any) -> str | None:
    """Why ``edit`` cannot be folded into the weights (None: it can): it must add the same
    thing at every position of every prompt."""
    if edit.gate is not None and _active(edit):
        return ("is gated: its strength depends on each prompt (a probe of the unedited "
                "model's hidden state)")
    if (edit.positions or "all") != "all":
        return f"applies at positions={edit.positions} only (after the prompt), not everywhere"
    if edit.kind == "neurons":
        c = edit.coefficients()
        if bool((c.scale != 0).any() | ~torch.isneginf(c.floor).all() | c.conditioned().any()):
            return (f"has rule {edit.rule!r}, which depends on each activation (only rules "
                    "that add a constant, add and add_sd, fold into a bias)")
    return None


def bias_deltas(host: ModelHost, edit: Any) -> dict[int, torch.Tensor]:
    """Per layer, what the edit adds to the down-projection's output, (H,) float64: a neuron
    edit W[:, idx] @ shift (W (H, I); GPT-2's Conv1D stores W transposed), a steering
    vector coefficient * v."""
    if edit.kind == "residual":
        return {layer: edit.coefficient * edit.vectors[i].double()
                for i, layer in enumerate(edit.layers)}
    shift, n = edit.coefficients().shift.double(), edit.neurons
    out = {}
    for layer in n.layer.unique().tolist():
        sel = n.layer == layer
        site, idx = host.sites[layer], n.index[sel]
        w = site.weight.detach().double().cpu()
        out[layer] = (shift[sel] @ w[idx, :] if type(site).__name__ == "Conv1D"
                      else w[:, idx] @ shift[sel])
    return out


def add_missing_biases(host: ModelHost, why: str) -> None:
    """Give the down-projections a bias (zeros) where they have none, only as transformers
    itself would build the model with ``mlp_bias=True``: every bias that config adds is
    created (zeros), and ``config.mlp_bias`` is set, so ``from_pretrained`` loads them all.
    Raises a ConfigError (``why`` names the edit) where that config cannot declare them."""
    model = host.model
    if all(getattr(s, "bias", None) is not None for s in host.sites):
        return
    from transformers import AutoModelForCausalLM

    model_type = model.config.model_type
    refuse = ConfigError(f"format: weights cannot hold the {why} edit on model_type "
                         f"{model_type!r}: its MLP down-projection has no bias and "
                         f"transformers' {type(model.config).__name__} cannot declare one "
                         "(no mlp_bias), so a checkpoint with an added bias would load "
                         "without it; use format=hooks")
    if not hasattr(model.config, "mlp_bias"):
        raise refuse
    cfg = copy.deepcopy(model.config)
    cfg.mlp_bias = True
    with torch.device("meta"):  # the parameter names only, no memory
        want = set(AutoModelForCausalLM.from_config(cfg).state_dict())
    have = set(model.state_dict())
    added = want - have
    if have - want or any(not k.endswith(".bias") for k in added):
        raise refuse
    for key in sorted(added):
        module = model.get_submodule(key.removesuffix(".bias"))
        if not isinstance(module, nn.Linear):
            raise refuse
        module.bias = nn.Parameter(torch.zeros(module.out_features, dtype=module.weight.dtype,
                                               device=module.weight.device))
    if any(getattr(s, "bias", None) is None for s in host.sites):
        raise refuse
    model.config.mlp_bias = True


@torch.no_grad()
def fold(host: ModelHost, edit: Any, why: str) -> None:
    """Fold a static ``edit`` into ``host.model``'s down-projection biases, in place, and
    check that the folded model gives the hooked edit's logits on :data:`PROBE_TEXT`."""
    from .edits.apply import apply

    deltas = bias_deltas(host, edit)
    batch = host.tokenize([PROBE_TEXT])
    with apply(host, edit):
        expected = host.model(**batch).logits.float()
    add_missing_biases(host, why)
    for layer, delta in deltas.items():
        bias = host.sites[layer].bias
        bias.copy_((bias.double() + delta.to(bias.device)).to(bias.dtype))
    got = host.model(**batch).logits.float()
    err = float((got - expected).abs().max())
    scale = max(1.0, float(expected.abs().max()))
    tol = (1e-4 if host.sites[0].weight.dtype == torch.float32 else 3e-2) * scale
    if not err <= tol:
        raise ConfigError(f"format: weights cannot hold the {why} edit on model_type "
                          f"{host.model.config.model_type!r}: the folded model's logits differ "
                          f"from the edit's by {err:.3g} (its blocks do not add the "
                          "down-projection's output straight to the residual stream); use "
                          "format=hooks")


@FORMATS.add("weights")
def write_weights(host: ModelHost, edit: Any, entry: dict, out: Path) -> list[Path]:
    """The folded model and its tokenizer, ``<stem>/`` (``save_pretrained``), with the edit's
    metadata in ``<stem>/neva_sweep_edit.json``."""
    problem = static_problem(edit)
    if problem:
        raise ConfigError(f"format: weights cannot hold the {_label(entry)} edit: it "
                          f"{problem}; use format=hooks")
    meta = {"format": "weights", **metadata(host, edit, entry)}  # the unfolded fingerprint
    fold(host, edit, _label(entry))
    path = out / _stem(entry)
    host.model.save_pretrained(path)
    host.tokenizer.save_pretrained(path)
    (path / "neva_sweep_edit.json").write_text(json.dumps(meta, indent=2))
    return [path]


# -- format=steering_vector ------------------------------------------------------------------
def write_control_vector(path: Path, directions: dict[int, torch.Tensor], n_layers: int,
                         model_hint: str) -> None:
    """A llama.cpp control vector: ``direction.N`` (n_embd,) float32 for N = 1 ..
    n_layers - 1 (zeros where ``directions`` has none), as llama.cpp's cvector-generator
    writes it; llama.cpp adds ``direction.N`` to the output of block N (0-based)."""
    import numpy as np
    from gguf import GGUFWriter

    width = next(iter(directions.values())).numel()
    with atomic_path(path) as tmp:
        writer = GGUFWriter(str(tmp), "controlvector")
        writer.add_string("controlvector.model_hint", model_hint)
        writer.add_int32("controlvector.layer_count", n_layers - 1)
        for layer in range(1, n_layers):
            v = directions.get(layer, torch.zeros(width))
            writer.add_tensor(f"direction.{layer}", v.float().cpu().numpy().astype(np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()


@FORMATS.add("steering_vector")
def write_steering_vector(host: ModelHost, edit: Any, entry: dict, out: Path) -> list[Path]:
    """``<stem>.steering_vector.pt`` (steering-vectors' ``SteeringVector`` arguments) and
    ``<stem>.gguf`` (a llama.cpp control vector), each the vector times its coefficient."""
    label = _label(entry)
    if edit.kind != "residual":
        raise ConfigError(f"format: steering_vector holds steering-vector edits (methods "
                          f"diffmean, caa_pairs); the {label} edit changes {edit.n_neurons} MLP "
                          "neurons: use format=hooks (or format=weights for a static add rule)")
    if edit.gate is not None and _active(edit):
        raise ConfigError(f"format: steering_vector cannot hold the {label} edit: it is gated "
                          "(its strength depends on each prompt); use format=hooks")
    if 0 in edit.layers:
        raise ConfigError(f"format: steering_vector cannot hold the {label} edit: it steers "
                          "block 0, whose output llama.cpp control vectors never reach "
                          "(direction.0 is rejected); use format=hooks")
    if (edit.positions or "all") != "all":
        log.warning("the %s edit applies at positions=%s, but steering vectors and llama.cpp "
                    "control vectors add at every position, prompt included (steering-vectors: "
                    "pass min_token_index=<prompt length - 1> to start at the last prompt "
                    "token); format=hooks keeps the positions", label, edit.positions)
    acts = residual_tensors(edit)
    acts = {int(k.split(".")[1]): v for k, v in acts.items()}
    stem = out / _stem(entry)
    sv = stem.with_name(f"{stem.name}.steering_vector.pt")
    with atomic_path(sv) as tmp:
        torch.save({"layer_activations": acts, "layer_type": "decoder_block"}, tmp)
    gguf = stem.with_name(f"{stem.name}.gguf")
    write_control_vector(gguf, acts, host.n_layers, str(host.model.config.model_type))
    return [sv, gguf]
