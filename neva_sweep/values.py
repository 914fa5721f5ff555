"""Schwartz's ten basic values: circumplex order, higher-order groups, circular distance.

Names follow pyvalues' ``OriginalValues`` fields; the order is the circumplex order
used everywhere in neva_sweep (statistics rows, CSR vectors, report axes). pyvalues is
imported on first use of ``DISPLAY_NAMES`` only: it loads matplotlib (about 0.6 s), and
the command line reads ``VALUES`` before it knows whether any work is to be done.
"""

from __future__ import annotations

VALUES: tuple[str, ...] = (
    "self_direction",
    "stimulation",
    "hedonism",
    "achievement",
    "power",
    "security",
    "conformity",
    "tradition",
    "benevolence",
    "universalism",
)
N_VALUES = len(VALUES)

# One-line definitions (this project's wording, after Schwartz's motivational goals),
# used in judge prompts.
DEFINITIONS: dict[str, str] = {
    "self_direction": "independent thought and action: choosing, creating and exploring "
                      "for oneself",
    "stimulation": "excitement, novelty and challenge in life",
    "hedonism": "pleasure, enjoyment and gratification for oneself",
    "achievement": "personal success by showing competence by social standards",
    "power": "social status and prestige, control or dominance over people and resources",
    "security": "safety, harmony and stability of society, of relationships and of oneself",
    "conformity": "restraint of actions that might upset or harm others or break social "
                  "expectations and rules",
    "tradition": "respect for and commitment to the customs and ideas of one's culture or "
                 "religion",
    "benevolence": "caring for the welfare of the people one is close to",
    "universalism": "understanding, tolerance and protection of the welfare of all people "
                    "and of nature",
}

# Higher-order groups; hedonism belongs to two of them.
GROUPS: dict[str, frozenset[str]] = {
    "openness_to_change": frozenset({"self_direction", "stimulation", "hedonism"}),
    "self_enhancement": frozenset({"hedonism", "achievement", "power"}),
    "conservation": frozenset({"security", "conformity", "tradition"}),
    "self_transcendence": frozenset({"benevolence", "universalism"}),
}

DISPLAY_NAMES: dict[str, str]  # human-readable names from pyvalues (e.g. "Self-direction")


def _display_names() -> dict[str, str]:
    from pyvalues import OriginalValues

    fields = OriginalValues.model_fields
    if set(VALUES) != set(fields):  # pragma: no cover - guards a pyvalues change
        raise ImportError(f"pyvalues' OriginalValues fields {sorted(fields)} no longer match "
                          f"neva_sweep's values {sorted(VALUES)}")
    return {name: fields[name].serialization_alias or name for name in VALUES}


def __getattr__(name: str) -> dict[str, str]:
    """``DISPLAY_NAMES``, computed on first use (see the module docstring)."""
    if name == "DISPLAY_NAMES":
        globals()[name] = names = _display_names()
        return names
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def value_index(value: str) -> int:
    """Position of ``value`` in the circumplex order.

    >>> value_index("power")
    4
    """
    try:
        return VALUES.index(value)
    except ValueError:
        raise KeyError(f"unknown value {value!r}; valid values: {', '.join(VALUES)}") from None


def check_value(value: str) -> str:
    """Return ``value`` unchanged, or raise a KeyError listing the valid names."""
    value_index(value)
    return value


def circular_distance(a: str | int, b: str | int) -> int:
    """Steps between two values around the circumplex, 0..5.

    >>> circular_distance("self_direction", "universalism")
    1
    >>> circular_distance("hedonism", "tradition")
    5
    """
    i = a if isinstance(a, int) else value_index(a)
    j = b if isinstance(b, int) else value_index(b)
    d = abs(i - j) % N_VALUES
    return min(d, N_VALUES - d)


def groups_of(value: str) -> list[str]:
    """Names of the higher-order groups that contain ``value``.

    >>> groups_of("hedonism")
    ['openness_to_change', 'self_enhancement']
    """
    check_value(value)
    return [g for g, members in GROUPS.items() if value in members]


def related_values(value: str) -> frozenset[str]:
    """Values sharing at least one higher-order group with ``value`` (itself included)."""
    return frozenset().union(*(GROUPS[g] for g in groups_of(value)))
