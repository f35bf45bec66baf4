"""Names in the state directory: one per run and per unit, never a path that climbs."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from worktree_mesh.state import safe_name, unit_ref_prefix

unit_ids = st.from_regex(re.compile(r"[A-Za-z0-9._-]+", re.ASCII), fullmatch=True)
# Dots behind a short prefix (none, or what an escaped spelling might start with): where
# the spellings of different ids are likeliest to meet.
near_ids = st.builds(lambda prefix, dots: prefix + dots,
                     st.sampled_from(["", "_", "-", "2e", "_2e", "x"]),
                     st.text(alphabet=".", min_size=1, max_size=3))
any_id = unit_ids | near_ids


@given(st.lists(any_id, unique=True, max_size=30))
def test_unit_directory_names_are_one_per_id(ids: list[str]) -> None:
    assert len({safe_name(uid) for uid in ids}) == len(ids)


@given(any_id)
def test_a_unit_directory_name_is_one_plain_component(unit_id: str) -> None:
    name = safe_name(unit_id)
    assert name not in (".", "..") and "/" not in name and name


def test_dot_ids_and_their_underscored_twins_are_apart() -> None:
    assert len({safe_name(uid) for uid in (".", "..", "_.", "_..", "2e2e", "...")}) == 6


@given(st.lists(any_id, unique=True, max_size=30))
def test_unit_ref_prefixes_are_one_per_id(ids: list[str]) -> None:
    assert len({unit_ref_prefix("r", uid) for uid in ids}) == len(ids)
