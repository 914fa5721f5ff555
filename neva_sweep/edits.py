"""Edits of every kind behind one interface: :class:`EditKind`, :func:`make_edit`, :func:`apply`.

An edit kind is a small frozen dataclass that carries its own behaviour, so that scoring,
evaluation records, ``task=steer``, sweep outputs and lm-eval never switch on its type:

- ``install(host, edits, row_groups, positions)`` (classmethod): hooks for G edits of the
  kind on ``host``, row b of a batch taking edit ``row_groups[b]`` (-1 = none); returns a
  :class:`~neva_sweep.edit.RowEditor` (``set_rows``, ``response_start``, ``remove``);
- ``prefix``: an instruction for the edited rows ("" = none): in the system turn of
  chat-templated sequences (after the default system prompt), a plain-text prefix of the
  others
  (:meth:`neva_sweep.scoring.EditGroup.with_prompt`);
- ``describe()``: the JSON-able record of the edit (``kind`` plus its own fields), and
  ``title()``: one line for people;
- ``n_neurons``: how many MLP neurons it edits (0 for other kinds);
- ``positions``: where it was meant to apply, or None.

The kinds: :class:`~neva_sweep.edit.NeuronEdit` (NeVA, random neurons),
:class:`~neva_sweep.caa.ResidualEdit` (diffmean and caa_pairs steering vectors) and
:class:`~neva_sweep.prompting.PromptEdit` (prompt prefixes). Batched scoring installs a
list of them with :func:`neva_sweep.scoring.grouped`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .edit_kind import EditKind
from .models.host import ModelHost

__all__ = ["EditKind", "apply", "make_edit"]

if TYPE_CHECKING:
    from .scoring import EditGroup
    from .stats import NeuronStats




def make_edit(stats: NeuronStats, value: str, method: str = "neva", **params: Any) -> EditKind:
    """The edit of ``method`` toward ``value``; absent ``params`` take the method's defaults.

    ``method`` is a name of :data:`neva_sweep.sweep.METHODS` (neva, random_neurons,
    diffmean, caa_pairs, prompt; caa: diffmean's deprecated former name); ``params`` are
    that method's sweep parameters (as in trials.csv and best_edits.json), and
    ``METHODS[method].defaults`` lists them with their defaults.
    The hooked methods (neva, random_neurons, diffmean, caa_pairs) take ``gate``: ``"none"``,
    ``"context"`` (each row's edit scaled by its value relevance) or ``"value"`` (by its
    relevance to ``value`` itself), :mod:`neva_sweep.gate`; the statistics must hold a gate.

    >>> import neva_sweep as nv
    >>> host = nv.load_model("tiny-llama")
    >>> stats = nv.collect_stats(host, nv.load_probes().shard(0, 2), progress=False)
    >>> edit = nv.make_edit(stats, "power", "diffmean", coefficient=1.5, layer_frac=1.0)
    >>> edit.describe()
    {'kind': 'residual', 'layers': [1], 'coefficient': 1.5}
    >>> with nv.apply(host, edit):  # every row edited; hooks removed on exit
    ...     out = host.model(**host.tokenize(["I help my neighbour."]))
    """
    from .sweep.methods import METHODS
    from .values import check_value

    m = METHODS[method]
    unknown = sorted(set(params) - set(m.defaults))
    if "gate" in unknown:  # gate="none" is every method's behaviour; another is refused
        if params["gate"] != "none":
            raise TypeError(f"method {method!r} takes no gate (edit.gate / search.space.gates "
                            "apply to neva, random_neurons, diffmean and caa_pairs); valid "
                            "parameters: "
                            f"{', '.join(m.defaults)}")
        params = {k: v for k, v in params.items() if k != "gate"}
        unknown.remove("gate")
    if unknown:
        raise TypeError(f"unknown parameter(s) {', '.join(unknown)} of method {method!r}; "
                        f"valid: {', '.join(m.defaults)}")
    for k, v in params.items():  # a number where the method expects one (strength: or None)
        numeric = isinstance(m.defaults[k], int | float) and not isinstance(m.defaults[k], bool)
        if (numeric or k == "strength") and v is not None and (
                isinstance(v, bool) or not isinstance(v, int | float)):
            raise TypeError(f"make_edit: parameter {k!r} of method {method!r} must be a number, "
                            f"got {v!r} ({type(v).__name__})")
    return m.build(stats, check_value(value), {**m.defaults, **params})


def check_edit(edit: object, where: str) -> None:
    """A TypeError saying what was passed where an edit was expected (a value name, a map)."""
    if isinstance(edit, str):
        raise TypeError(f"{where} takes an edit, not the string {edit!r}; build one with "
                        f"nv.make_edit(stats, {edit!r}, method=...) or nv.NeuronEdit(...)")
    if not callable(getattr(edit, "install", None)) or not hasattr(edit, "positions"):
        raise TypeError(f"{where} takes an edit (nv.make_edit, nv.NeuronEdit, ResidualEdit or "
                        f"PromptEdit), not a {type(edit).__name__}")


def apply(host: ModelHost, edit: EditKind, positions: str | None = None) -> Applied:
    """Install ``edit`` for every row of every batch; hooks are removed on exit.

    ``positions``: ``all`` or ``response``; by default the edit's own positions, else
    ``all``. A prompt edit installs no hooks: it acts through the token prefix, which the
    scoring functions of :mod:`neva_sweep.scoring` prepend when given the edit; with a plain
    ``host.model(...)`` call, prepend ``group.prefixes[0]`` to each sequence's ids. The
    returned object may be entered again after its block ends (each ``with`` installs
    the edit anew); entering it inside its own block raises.
    """
    check_edit(edit, "nv.apply")
    return Applied(host, edit, positions or edit.positions or "all")


class Applied:
    """The context manager :func:`apply` returns: installs on enter, removes on exit."""

    def __init__(self, host: ModelHost, edit: EditKind, positions: str):
        self.host, self.edit, self.positions = host, edit, positions
        self._active = None

    def __enter__(self) -> EditGroup:
        from .scoring import grouped

        if self._active is not None:
            raise RuntimeError("this nv.apply(...) block is already active: entering it again "
                               "inside itself would install the edit twice; end the block "
                               "first, or call nv.apply again for a second edit")
        cm = grouped(self.host, [self.edit], self.positions)
        group = cm.__enter__()
        self._active = cm
        group.set_rows([0])  # one row group: every row of any batch
        return group

    def __exit__(self, *exc) -> bool | None:
        cm, self._active = self._active, None
        return cm.__exit__(*exc)
