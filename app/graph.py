"""Pure layout of a workflow's DAG for drawing (the web UI): each task gets a column (its longest
distance from a root) and a row within that column, ordered to keep edges short (one barycentre pass)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence


def layout(deps: Mapping[str, Sequence[str]]) -> dict[str, tuple[int, int]]:
    """``{task: [upstream, ...]}`` (acyclic, as validated at registration) -> ``{task: (layer, row)}``.

    Tasks keep their definition order within a layer unless their upstream tasks' rows say otherwise."""
    layer: dict[str, int] = {}
    # iterative longest path (a 10,000-task chain would overflow a recursive one)
    for name in deps:
        stack = [name]
        while stack:
            top = stack[-1]
            if top in layer:
                stack.pop()
                continue
            todo = [d for d in deps.get(top, ()) if d in deps and d not in layer]
            if todo:
                stack.extend(todo)
            else:
                layer[top] = 1 + max((layer[d] for d in deps[top] if d in deps), default=-1)
                stack.pop()

    order = {name: i for i, name in enumerate(deps)}
    columns: dict[int, list[str]] = {}
    for n in deps:
        columns.setdefault(layer[n], []).append(n)
    rows: dict[str, int] = {}
    for col in sorted(columns):
        names = columns[col]

        def key(n: str) -> tuple[float, int]:
            ups = [rows[d] for d in deps[n] if d in rows]
            return (sum(ups) / len(ups) if ups else float(order[n]), order[n])

        for row, name in enumerate(sorted(names, key=key)):
            rows[name] = row
    return {n: (layer[n], rows[n]) for n in deps}
