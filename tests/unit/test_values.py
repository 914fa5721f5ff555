import pytest

from neva_sweep.values import (
    GROUPS,
    VALUES,
    circular_distance,
    groups_of,
    related_values,
    value_index,
)


def test_circumplex_order_and_groups():
    assert VALUES[0] == "self_direction" and VALUES[-1] == "universalism"
    assert VALUES.index("conformity") < VALUES.index("tradition")
    assert groups_of("hedonism") == ["openness_to_change", "self_enhancement"]
    assert sum("hedonism" in g for g in GROUPS.values()) == 2
    assert set().union(*GROUPS.values()) == set(VALUES)
    assert related_values("power") == {"hedonism", "achievement", "power"}


def test_circular_distance_properties():
    for a in VALUES:
        assert circular_distance(a, a) == 0
        for b in VALUES:
            assert circular_distance(a, b) == circular_distance(b, a)
            assert 0 <= circular_distance(a, b) <= 5
    assert circular_distance("self_direction", "universalism") == 1
    assert circular_distance("stimulation", "conformity") == 5


def test_unknown_value_lists_choices():
    with pytest.raises(KeyError, match="valid values: self_direction, stimulation"):
        value_index("kindness")
