"""Edits: the kinds (one module each) behind one interface, :class:`EditKind` (kind.py),
and :func:`apply` (apply.py), which installs any of them on a model.

An edit kind is a small frozen dataclass that carries its own behaviour, so that scoring,
evaluation records, ``task=steer``, sweep outputs and lm-eval never switch on its type:

- ``install(host, edits, row_groups, positions)`` (classmethod): hooks for G edits of the
  kind on ``host``, row b of a batch taking edit ``row_groups[b]`` (-1 = none); returns a
  :class:`~neva_sweep.edits.neuron.RowEditor` (``set_rows``, ``response_start``, ``remove``);
- ``prefix``: an instruction for the edited rows ("" = none): in the system turn of
  chat-templated sequences (after the default system prompt), a plain-text prefix of the
  others
  (:meth:`neva_sweep.edits.group.EditGroup.with_prompt`);
- ``describe()``: the JSON-able record of the edit (``kind`` plus its own fields), and
  ``title()``: one line for people;
- ``n_neurons``: how many MLP neurons it edits (0 for other kinds);
- ``positions``: where it was meant to apply, or None.

The kinds: :class:`~neva_sweep.edits.neuron.NeuronEdit` (neuron.py: NeVA, random neurons),
:class:`~neva_sweep.edits.residual.ResidualEdit` (residual.py: diffmean and caa_pairs
steering vectors) and
:class:`~neva_sweep.edits.prompt.PromptEdit` (prompt.py: prompt prefixes). Batched scoring installs
a
list of them with :func:`neva_sweep.edits.group.grouped`.

The edit of a registered method from its parameters: :func:`neva_sweep.methods.make_edit`.
"""

from .apply import Applied, apply, check_edit
from .kind import EditKind

__all__ = ["Applied", "EditKind", "apply", "check_edit"]
