"""Pure layout of a workflow's DAG for drawing (the web UI): each task gets a column (its longest
distance from a root) and a row within that column, ordered to keep edges short (one barycentre pass)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence


def layout(deps: Mapping[str, Sequence[str]]) -> dict[str, tuple[int, int]]:
    """``{task: [upstream, ...]}`` (acyclic, as validated at registration) -> ``{task: (layer, row)}``.

    Tasks keep their definition order within a layer unless their upstream tasks' rows say otherwise."""
    layer: dict[str, int] = {}

    def depth(name: str) -> int:
        if name not in layer:
            layer[name] = 0  # placeholder: definitions are acyclic, so this is never read back
            layer[name] = 1 + max((depth(d) for d in deps.get(name, ()) if d in deps), default=-1)
        return layer[name]

    order = {name: i for i, name in enumerate(deps)}
    for name in deps:
        depth(name)
    rows: dict[str, int] = {}
    for col in range(max(layer.values(), default=-1) + 1):
        names = [n for n in deps if layer[n] == col]

        def key(n: str) -> tuple[float, int]:
            ups = [rows[d] for d in deps[n] if d in rows]
            return (sum(ups) / len(ups) if ups else float(order[n]), order[n])

        for row, name in enumerate(sorted(names, key=key)):
            rows[name] = row
    return {n: (layer[n], rows[n]) for n in deps}
