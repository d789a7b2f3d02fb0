from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from api.body_guard import json_depth

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(alphabet='[]{}"\\ab'),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.text(alphabet='[]{}"\\ab', max_size=3), inner, max_size=3)
    ),
    max_leaves=20,
)


def _depth(value: object) -> int:
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    return 0


@given(_json)
def test_depth_matches_the_parsed_structure_and_ignores_brackets_in_strings(value: object) -> None:
    assert json_depth(json.dumps(value)) == _depth(value)


def test_a_huge_nesting_is_counted_without_recursion() -> None:
    assert json_depth("[" * 200_000 + "]" * 200_000) == 200_000
