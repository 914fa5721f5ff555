"""Value judges: how strongly the model's answers express each of the ten values.

A judge returns, for each of G edits (None = unedited), an expression matrix
E (Q, V), columns in ``VALUES`` order (see evaluation/metrics.py), plus the uncentred, unnormalised
reading it came from (``raw``, the basis of the ``acquiescence`` metric):

- ``forced_choice`` (the default): per scenario, ten first-person options, one per value,
  each scored as a continuation of the scenario prompt (mean per-token log-probability,
  never listed, never lettered); E[q, j] = softmax over the ten options. ``raw`` holds
  the log-probabilities themselves.
- ``questionnaire``: the model answers "Is this person like you?" for each questionnaire
  item; E comes from the Yes/No next-token log-probabilities (no generation). Row k is a
  "form" holding the k-th item of every value, so CSR_j is the mean agreement with
  value j's items. Centred by default (``judge.centre``): each form's mean agreement over
  the ten values is subtracted (Schwartz's PVQ key), so E lies in [-1, 1] and a general
  "more Yes" moves no value; ``raw`` is the uncentred agreement.
- ``lexicon``: greedy replies to the queries, split into sentences and labelled with
  pyvalues' English value dictionary; E[q, j] = share of reply q's sentences labelled j.
- ``llm``: greedy replies to the queries, then a judge model (the evaluated model with no
  edit, or a separate model) is asked per value whether the reply puts it first;
  E[q, j] = P(Yes) / (P(Yes) + P(No)).

All judges are deterministic: greedy decoding and log-probabilities only. Edits are
active only while the edited rows are generated or scored; judging is never edited.
"""

# registered on import, in the order the judges are listed in
# isort: off
from . import forced_choice, questionnaire, lexicon, llm, classifier  # noqa: F401
# isort: on

from ...registry import import_package
from .base import JUDGES, Judge, Judgement, make_judge, pick_queries, split_sentences
from .classifier import ClassifierJudge
from .forced_choice import ForcedChoiceJudge
from .lexicon import LexiconJudge
from .llm import LLMJudge
from .questionnaire import QuestionnaireJudge

import_package(__name__, __path__)  # a judge in a new module registers itself

__all__ = ["JUDGES", "ClassifierJudge", "ForcedChoiceJudge", "Judge", "Judgement",
           "LLMJudge", "LexiconJudge", "QuestionnaireJudge", "make_judge", "pick_queries",
           "split_sentences"]
