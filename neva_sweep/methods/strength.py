"""Scaled edit strength: one number that means the same dose whatever the neuron count.

A raw ``magnitude`` is in activation units per neuron: the ``add`` rule moves each of k
selected neurons by ``magnitude * delta(i)``, so the same magnitude on 9,000 neurons is a
far larger edit than on 90, and a search box in magnitude suits one sparsity only. The
sweep therefore searches a *strength* and derives the raw setting from it per trial.

**Neuron edits** (methods neva and random_neurons, every rule). The strength is the norm
of the edit's expected activation change in units of each neuron's own standard
deviation::

    strength = || E[delta_S] / sd_S ||_2

with ``E[delta_S]`` the expected change of the k edited neurons
(:func:`neva_sweep.methods.nulls.expected_change`: exact for ``add``, ``add_sd`` and ``scale``,
from the statistics' histograms for the input-dependent ``set`` and ``gate_neuron``) and
``sd_S`` their pooled standard deviation on the probes (:attr:`ValueNeurons.std`). For the
rules linear in the magnitude (``add``, ``add_sd``, ``scale``, ``gate_neuron``: its
condition does not depend on the magnitude) the magnitude is ``strength / unit`` with
``unit`` the norm at magnitude 1; for ``set`` it is found by bisection (the norm grows
monotonically with the magnitude). Doubling the count at a
fixed strength halves each neuron's share of the squared push, so a strength means
roughly the same capability cost at every sparsity: on SmolLM2 the strength that reaches
KL 0.05 moves 1.1-1.9x over sparsities 5e-4 to 0.05 (24 to 2,304 neurons), the raw
magnitude 2.1-4.6x (benchmarks/experiments/strength_scaling.py, four values).

**Residual edits, diffmean** (formerly ``caa``). The strength is the coefficient itself: a
multiple of the value's own steering vector at the edited layer, whose norm already
follows the layer's scale. Dividing by the norm of the mean residual stream at the layer
was measured and rejected: across layers 0.2-0.8 of the depth, the coefficient that
reaches KL 0.05 moves by 1.8-4.3x per value, the relative norm by 4.5-7.7x
(benchmarks/experiments/strength_scaling.py on SmolLM2, four values; docs/strength_scaling.json).

**Residual edits, caa_pairs.** The vector is a unit direction (the stance pairs' mean
difference) times the mean residual norm at the answer position, so the strength is the
fraction of that norm added (neva_sweep/edits/residual.py
:func:`~neva_sweep.edits.residual.pair_vectors`): the
direction's raw norm measures how separable the pairs are, not a dose. The calibration
recentres its box (``search.space.caa_pairs.strength``) as for the other methods.
"""

from __future__ import annotations

import math

from ..edits.neuron import NeuronEdit
from ..neurons.selection import ValueNeurons
from ..neurons.stats import NeuronStats

MAX_MAGNITUDE = 1e4  # bisection bound for non-linear rules (set): far past any useful edit


def neuron_strength(neurons: ValueNeurons, rule: str, magnitude: float,
                    stats: NeuronStats | None = None) -> float:
    """|| E[delta] / sd ||_2 of ``rule`` at ``magnitude`` on ``neurons`` (see the module
    docstring); ``stats`` is needed for every rule but ``add`` and ``add_sd``.

    >>> import torch
    >>> vn = ValueNeurons(torch.tensor([0, 1]), torch.tensor([3, 4]), torch.ones(2),
    ...                   torch.tensor([3.0, 4.0]), torch.zeros(2), std=torch.ones(2))
    >>> neuron_strength(vn, "add", 2.0)
    10.0
    """
    from .nulls import expected_change  # nulls imports edit kinds; this module is a leaf

    if neurons.std is None:
        raise ValueError("a scaled strength needs the neurons' standard deviations, which "
                         "neuron maps saved by older versions lack; select the neurons again "
                         "or search the raw magnitude (search.space.scaled=false)")
    change = expected_change(NeuronEdit(neurons, rule, float(magnitude)), stats)
    layer = neurons.layer.long()
    total = 0.0
    for lay, (_, delta) in change.items():  # expected_change keeps each layer's order
        sd = neurons.std[layer == lay].double().clamp(min=1e-6)
        total += float((delta.double() / sd).pow(2).sum())
    return math.sqrt(total)


def neuron_magnitude(neurons: ValueNeurons, rule: str, strength: float,
                     stats: NeuronStats | None = None, tol: float = 1e-4) -> float:
    """The magnitude whose :func:`neuron_strength` is ``strength`` (>= 0).

    Rules linear in the magnitude (``add``, ``add_sd``, ``scale``, ``gate_neuron``: the
    strength doubles with it): ``strength / unit``. Others (``set``): bisection on
    [0, MAX_MAGNITUDE] to a relative tolerance ``tol``.

    >>> import torch
    >>> vn = ValueNeurons(torch.tensor([0, 1]), torch.tensor([3, 4]), torch.ones(2),
    ...                   torch.tensor([3.0, 4.0]), torch.zeros(2), std=torch.ones(2))
    >>> neuron_magnitude(vn, "add", 10.0)
    2.0
    """
    if not strength >= 0 or not math.isfinite(strength):
        raise ValueError(f"strength must be a finite number >= 0, got {strength}")
    if strength == 0:
        return 0.0
    unit = neuron_strength(neurons, rule, 1.0, stats)
    if unit <= 0:
        raise ValueError(f"rule {rule!r} does not move these {len(neurons)} neurons at "
                         "magnitude 1 (zero expected change); no magnitude reaches a strength")
    if math.isclose(neuron_strength(neurons, rule, 2.0, stats), 2 * unit, rel_tol=1e-4):
        return strength / unit
    lo, hi = 0.0, 1.0
    while neuron_strength(neurons, rule, hi, stats) < strength:
        if hi >= MAX_MAGNITUDE:
            raise ValueError(f"rule {rule!r}: strength {strength:g} is out of reach "
                             f"(magnitude {MAX_MAGNITUDE:g} gives less)")
        lo, hi = hi, hi * 2
    while hi - lo > tol * hi:
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if neuron_strength(neurons, rule, mid, stats) < strength else (lo, mid)
    return (lo + hi) / 2
