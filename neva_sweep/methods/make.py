"""``make_edit``: the edit of any registered method, from its sweep parameters."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..edits.kind import EditKind

if TYPE_CHECKING:
    from ..neurons.stats import NeuronStats


def make_edit(stats: NeuronStats, value: str, method: str = "neva", **params: Any) -> EditKind:
    """The edit of ``method`` toward ``value``; absent ``params`` take the method's defaults.

    ``method`` is a name of :data:`neva_sweep.methods.METHODS` (neva, random_neurons,
    diffmean, caa_pairs, prompt; caa: diffmean's deprecated former name); ``params`` are
    that method's sweep parameters (as in trials.csv and best_edits.json), and
    ``METHODS[method].defaults`` lists them with their defaults.
    The hooked methods (neva, random_neurons, diffmean, caa_pairs) take ``gate``: ``"none"``,
    ``"context"`` (each row's edit scaled by its value relevance) or ``"value"`` (by its
    relevance to ``value`` itself), :mod:`neva_sweep.neurons.gate`; the statistics must hold a gate.

    >>> import neva_sweep as nv
    >>> host = nv.load_model("tiny-llama")
    >>> stats = nv.collect_stats(host, nv.load_probes().shard(0, 2), progress=False)
    >>> edit = nv.make_edit(stats, "power", "diffmean", coefficient=1.5, layer_frac=1.0)
    >>> edit.describe()
    {'kind': 'residual', 'layers': [1], 'coefficient': 1.5}
    >>> with nv.apply(host, edit):  # every row edited; hooks removed on exit
    ...     out = host.model(**host.tokenize(["I help my neighbour."]))
    """
    from ..values import check_value
    from . import METHODS  # the package: every method registered

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
