"""The run page's DAG layout: columns by longest path from a root, rows ordered to keep edges short."""

from __future__ import annotations

from app.graph import layout


def test_chain_and_fan_out_fan_in() -> None:
    deps = {"extract": [], "a": ["extract"], "b": ["extract"], "c": ["extract"], "join": ["a", "b", "c"],
            "report": ["join"]}
    pos = layout(deps)
    assert [pos[n][0] for n in deps] == [0, 1, 1, 1, 2, 3]
    assert sorted(pos[n][1] for n in ("a", "b", "c")) == [0, 1, 2]
    assert len(set(pos.values())) == len(deps)  # no two tasks share a cell


def test_column_is_the_longest_path() -> None:
    # d depends on a root directly and on the end of a chain: it goes after the chain
    pos = layout({"r": [], "x": ["r"], "y": ["x"], "d": ["r", "y"]})
    assert pos["d"] == (3, 0)


def test_rows_follow_their_upstream() -> None:
    # two independent chains declared interleaved: each child sits in its parent's row
    pos = layout({"p1": [], "p2": [], "c2": ["p2"], "c1": ["p1"]})
    assert pos["c1"][1] == pos["p1"][1] and pos["c2"][1] == pos["p2"][1]


def test_empty_and_single() -> None:
    assert layout({}) == {}
    assert layout({"only": []}) == {"only": (0, 0)}


def test_long_chain_has_no_recursion_limit() -> None:
    deps = {f"t{i}": [f"t{i - 1}"] if i else [] for i in range(20_000)}
    pos = layout(deps)
    assert pos["t19999"] == (19_999, 0)
