"""Capability on lm-evaluation-harness tasks (MMLU, HellaSwag, local YAML tasks), edited or not.

The harness runs on the host's already-loaded model through its ``HFLM`` wrapper, so an edit
of any kind is installed around the evaluation by its own ``install`` (hooks), and a prompt
edit's prefix is prepended to every request. Everything runs offline: a task whose dataset
is not in the local Hugging Face cache (or in local files) fails with an error naming it,
instead of a download. ``lm_eval`` is an optional dependency, imported only when used.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import random
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import torch

from ..edits.kind import EditKind
from ..edits.neuron import RowEditor, check_positions
from ..models.host import ModelHost

Scores = dict[str, dict[str, float]]
N_SAMPLES = "n_samples"  # documents evaluated per task; not a metric, so no drop


def _import_lm_eval():
    try:
        import lm_eval
    except ImportError as e:
        raise ImportError(
            "lm-evaluation-harness is not installed; `pip install lm-eval` to score "
            "capability.lm_eval_tasks"
        ) from e
    return lm_eval


@lru_cache(maxsize=4)
def _task_manager(include: tuple[str, ...]):
    """The harness's task index: built-in tasks plus ``include`` dirs.

    Cached because scanning the ~15k built-in task YAMLs takes seconds, and a sweep scores
    every trial. YAML files added to an include dir after the first call are not seen.
    """
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=list(include) or None)


@lru_cache(maxsize=1)
def _host_lm_class() -> type:
    """``HFLM`` that, under ``positions="response"``, tells the editors where each scored
    continuation starts (the harness hands ``_model_call`` only right-padded token ids),
    and prepends ``prefix`` (prompt edits) to every request: as token ids before each
    log-likelihood context, as text before each generation context."""
    from lm_eval.models.huggingface import HFLM

    class HostLM(HFLM):
        def __init__(self, host: ModelHost, batch_size: int) -> None:
            super().__init__(pretrained=host.model, tokenizer=host.tokenizer,
                             batch_size=batch_size)
            self.editors: list[RowEditor] = []
            self.prefix = ""
            self._starts: dict[tuple[int, ...], int] = {}

        def _loglikelihood_tokens(self, requests, disable_tqdm=False, override_bs=None):
            if self.prefix:  # also reached by loglikelihood_rolling's windows
                ids = self.tokenizer(self.prefix, add_special_tokens=False).input_ids
                requests = [(key, ids + list(ctx), cont) for key, ctx, cont in requests]
            if any(e.positions == "response" for e in self.editors):
                # The harness feeds (context + continuation)[-(max_length + 1):][:-1]; the
                # continuation's first token sits len(cont) - 1 positions before its end.
                for _, ctx, cont in requests:
                    inp = (ctx + cont)[-(self.max_length + 1):][:-1]
                    self._starts[tuple(inp)] = len(inp) - len(cont) + 1
            try:
                return super()._loglikelihood_tokens(requests, disable_tqdm, override_bs)
            finally:
                self._starts = {}

        def generate_until(self, requests, disable_tqdm=False):
            if self.prefix:
                requests = [dataclasses.replace(r, arguments=(self.prefix + r.args[0],
                                                              *r.args[1:])) for r in requests]
            return super().generate_until(requests, disable_tqdm)

        def _row_start(self, row: list[int]) -> int | None:
            n = len(row)
            while n and row[n - 1] == 0:  # right padding is 0, but so may be a real token
                n -= 1
            for length in range(n, len(row) + 1):
                if (start := self._starts.get(tuple(row[:length]))) is not None:
                    return start
            return None

        def _model_call(self, inps: torch.Tensor, attn_mask=None, labels=None) -> torch.Tensor:
            starts = [self._row_start(r) for r in inps.tolist()] if self._starts else [None]
            if None not in starts:
                for e in self.editors:
                    e.response_start = torch.tensor(starts)  # (B,)
            try:
                return super()._model_call(inps, attn_mask, labels)
            finally:
                for e in self.editors:
                    e.response_start = None

    return HostLM


@contextmanager
def _isolated() -> Iterator[None]:
    """No downloads (hub and datasets offline), and the caller's RNG state kept.

    The offline flags are read at import time, so the imported modules are patched as well
    as the environment. ``simple_evaluate`` reseeds random, numpy and torch: restore them.
    """
    import datasets.config
    import huggingface_hub.constants

    flags = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    py_state, np_state = random.getstate(), np.random.get_state()
    with ExitStack() as stack:
        stack.enter_context(mock.patch.dict(os.environ, flags))
        stack.enter_context(mock.patch.object(huggingface_hub.constants, "HF_HUB_OFFLINE", True))
        for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
            stack.enter_context(mock.patch.object(datasets.config, name, True))
        stack.enter_context(torch.random.fork_rng())
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


def _check_names(manager, names: Sequence[str], include: tuple[str, ...]) -> None:
    for name in names:
        if name in manager.all_tasks or Path(name).is_file():
            continue
        close = difflib.get_close_matches(name, manager.all_tasks, n=5)
        where = f" or in {', '.join(include)}" if include else ""
        raise KeyError(
            f"unknown lm-eval task {name!r} (capability.lm_eval_tasks): not a task, group, tag "
            f"or YAML file among the harness's built-in tasks{where}"
            + (f"; close matches: {', '.join(close)}" if close else "")
            + ". For a local task pass its YAML directory as include_path "
            "(capability.lm_eval_include)"
        )


def _load_tasks(manager, names: Sequence[str]) -> list[Any]:
    """Build the requested tasks (loading their datasets) one name at a time.

    One at a time so that a dataset missing offline is reported with the task that needs it,
    before any evaluation runs. Returns the top-level Task/Group objects, ready for
    ``simple_evaluate``.
    """
    built: list[Any] = []
    for name in names:
        try:
            loaded = manager.load([name])
        except OSError as e:  # datasets/hub: ConnectionError (offline), FileNotFoundError
            raise FileNotFoundError(
                f"lm-eval task {name!r} (capability.lm_eval_tasks): its dataset is not available "
                f"offline ({type(e).__name__}: {e}). Download it into the Hugging Face datasets "
                "cache on a machine with network access, point a local task YAML at local files "
                "(capability.lm_eval_include), or drop the task"
            ) from e
        children = {c for kids in loaded["group_map"].values() for c in kids}
        built += [g for n, g in loaded["groups"].items() if n not in children]
        built += [t for n, t in loaded["tasks"].items() if n not in children]
    return built


def _flatten(results: dict[str, dict], n_samples: dict[str, dict]) -> Scores:
    """{task: {metric: float}} from the harness's ``"acc,none"``-style keys.

    The ``none`` filter suffix is dropped; other filters stay (``"exact_match,strict-match"``);
    standard errors become ``<metric>_stderr``. Non-numeric entries (alias, "N/A") are left out.
    """
    out: Scores = {}
    for task, row in results.items():
        scores: dict[str, float] = {}
        for key, value in row.items():
            if "," not in key or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            name, filt = key.split(",", 1)
            metric = name.removesuffix("_stderr")
            if filt != "none":
                metric = f"{metric},{filt}"
            scores[metric + ("_stderr" if name.endswith("_stderr") else "")] = float(value)
        if task in n_samples:
            scores[N_SAMPLES] = float(n_samples[task]["effective"])
        out[task] = scores
    return out


def lm_eval_scores(
    host: ModelHost,
    tasks: Sequence[str],
    edit: Sequence[EditKind] | None = None,
    positions: str | None = None,
    include_path: str | Path | Sequence[str | Path] | None = None,
    limit: int | float | None = None,
    batch_size: int = 8,
    num_fewshot: int | None = None,
) -> Scores:
    """Scores of ``host`` on lm-evaluation-harness ``tasks``, with ``edit`` active if given.

    Every edit of ``edit`` (any kind: neurons, steering vectors, a prompt) applies to every
    row, composed in order, at ``positions`` (default: each edit's own positions, else
    ``all``); under ``"response"`` a scored continuation is edited from the last context
    token on. Prompt edits' prefixes precede every request.
    ``include_path`` adds directories of task YAMLs; ``limit`` caps documents per task (a
    float < 1 is a fraction). Returns ``{task: {metric: value}}`` with ``<metric>_stderr``
    and ``n_samples``; groups (e.g. ``mmlu``) appear with each of their subtasks.

    >>> base = lm_eval_scores(host, ["mmlu"], limit=20)  # doctest: +SKIP
    >>> power = [nv.make_edit(stats, "power", magnitude=4.0)]  # doctest: +SKIP
    >>> edited = lm_eval_scores(host, ["mmlu"], power, limit=20)  # doctest: +SKIP
    >>> lm_eval_drop(base, edited)["mmlu"]["acc"]  # doctest: +SKIP
    0.0125
    """
    lm_eval = _import_lm_eval()
    names = [tasks] if isinstance(tasks, str) else list(tasks)
    if not names:
        raise ValueError("no lm-eval tasks given (capability.lm_eval_tasks)")
    if positions is not None:
        check_positions(positions)
    if any(tuple(s) != (0, n) for s, n in zip(host.neuron_slices, host.layer_sizes)):
        raise ValueError(f"{host.name} is a tensor-parallel shard; lm-eval scoring needs the "
                         "whole model on one host (model.tp_size = 1)")
    paths = [] if include_path is None else (
        [include_path] if isinstance(include_path, (str, Path)) else list(include_path))
    include = tuple(str(Path(p).expanduser().resolve()) for p in paths)
    for p in include:
        if not Path(p).exists():
            raise FileNotFoundError(f"{p}: lm-eval task directory not found "
                                    "(capability.lm_eval_include)")
    manager = _task_manager(include)
    _check_names(manager, names, include)
    with _isolated():
        built = _load_tasks(manager, names)
        lm = _host_lm_class()(host, batch_size)
        with ExitStack() as stack:
            for e in edit or ():
                editor = type(e).install(host, [e], torch.zeros(1, dtype=torch.long),
                                         positions or e.positions or "all")
                stack.callback(editor.remove)
                lm.editors.append(editor)
            lm.prefix = "".join(e.prefix for e in edit or ())
            out = lm_eval.simple_evaluate(lm, tasks=built, task_manager=manager, limit=limit,
                                          num_fewshot=num_fewshot, log_samples=False)
    return _flatten(out["results"], out.get("n-samples", {}))


def lm_eval_drop(base: Scores, edited: Scores) -> Scores:
    """Per task and metric, ``base - edited``: positive means the edit lowered the metric.

    That is a capability loss for higher-is-better metrics (acc); for lower-is-better ones
    (perplexity, brier_score) read the sign the other way. Standard errors and sample
    counts are not differenced.

    >>> lm_eval_drop({"t": {"acc": 0.5, "acc_stderr": 0.1}}, {"t": {"acc": 0.25}})
    {'t': {'acc': 0.25}}
    """
    drop: Scores = {}
    for task, metrics in base.items():
        if task not in edited:
            raise KeyError(f"lm-eval task {task!r} is in the base scores but not the edited ones")
        drop[task] = {}
        for metric, value in metrics.items():
            if metric == N_SAMPLES or metric.endswith("_stderr"):
                continue
            if metric not in edited[task]:
                raise KeyError(f"metric {metric!r} of lm-eval task {task!r} is missing from the "
                               "edited scores")
            drop[task][metric] = value - edited[task][metric]
    return drop
