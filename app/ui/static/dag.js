// The run's DAG as SVG: a column per `layer`, a row per `row` (laid out by the server, app/graph.py),
// edges from `depends_on`. Each node carries class `state-<state>` and data-state; CSS gives the colour.
'use strict';

const TFDag = (() => {
  const { svg } = TF;
  const W = 176; const H = 50; const GAP_X = 72; const GAP_Y = 22; const PAD = 12;
  const MAX_NAME = 22;

  const x = (t) => PAD + t.layer * (W + GAP_X);
  const y = (t) => PAD + t.row * (H + GAP_Y);
  const short = (name) => (name.length > MAX_NAME ? `${name.slice(0, MAX_NAME - 1)}…` : name);

  function subtitle(t) {
    const attempt = t.attempt > 1 || t.attempts.length > 1 ? ` · attempt ${t.attempt}` : '';
    const child = t.child_run_id ? ` · run #${t.child_run_id}` : '';
    return `${t.state}${attempt}${child}`;
  }

  function edge(from, to) {
    const x1 = x(from) + W; const y1 = y(from) + H / 2;
    const x2 = x(to) - 6; const y2 = y(to) + H / 2;
    const bend = Math.max(24, (x2 - x1) / 2);
    return svg('path', {
      class: 'edge', 'marker-end': 'url(#arrow)', 'data-from': from.name, 'data-to': to.name,
      d: `M${x1},${y1} C${x1 + bend},${y1} ${x2 - bend},${y2} ${x2},${y2}`,
    });
  }

  function node(t, onSelect) {
    const g = svg('g', {
      class: 'node', 'data-task': t.name, 'data-task-id': t.id, tabindex: 0, role: 'button',
      transform: `translate(${x(t)},${y(t)})`,
      onclick: () => onSelect(t.id),
      onkeydown: (e) => { if (e.key === 'Enter' || e.key === ' ') { e.preventDefault(); onSelect(t.id); } },
    },
    svg('title', {}),
    svg('rect', { class: 'node-box', width: W, height: H, rx: 8, ry: 8 }),
    svg('text', { class: 'node-name', x: 12, y: 21 }, short(t.name)),
    svg('text', { class: 'node-sub', x: 12, y: 38 }));
    return g;
  }

  // (re)build only when the graph's shape changes; otherwise update the nodes in place (no flicker)
  function render(container, tasks, selectedId, onSelect) {
    const shape = tasks.map((t) => `${t.id}:${t.layer}:${t.row}:${t.depends_on.join(',')}`).join('|');
    if (container.dataset.shape !== shape) {
      container.dataset.shape = shape;
      container.replaceChildren(build(tasks, onSelect));
    }
    for (const t of tasks) {
      const g = container.querySelector(`g.node[data-task-id="${t.id}"]`);
      if (!g) continue;
      const selected = t.id === selectedId ? ' selected' : '';
      g.setAttribute('class', `node state-${t.state}${selected}`);
      g.setAttribute('data-state', t.state);
      g.setAttribute('aria-label', `${t.name}: ${t.state}`);
      g.querySelector('.node-sub').textContent = subtitle(t);
      g.querySelector('title').textContent = `${t.name}\n${subtitle(t)}${t.error ? `\n${t.error}` : ''}`;
    }
  }

  function build(tasks, onSelect) {
    const byName = new Map(tasks.map((t) => [t.name, t]));
    const cols = Math.max(1, ...tasks.map((t) => t.layer + 1));
    const rows = Math.max(1, ...tasks.map((t) => t.row + 1));
    const width = 2 * PAD + cols * W + (cols - 1) * GAP_X;
    const height = 2 * PAD + rows * H + (rows - 1) * GAP_Y;
    const root = svg('svg', {
      class: 'dag', width, height, viewBox: `0 0 ${width} ${height}`, role: 'img', 'aria-label': 'task graph',
    });
    root.append(svg('defs', {}, svg('marker', {
      id: 'arrow', viewBox: '0 0 10 10', refX: 1, refY: 5, markerWidth: 7, markerHeight: 7, orient: 'auto',
    }, svg('path', { class: 'arrow', d: 'M0,0 L10,5 L0,10 z' }))));
    const edges = svg('g', { class: 'edges' });
    for (const t of tasks) {
      for (const dep of t.depends_on) if (byName.has(dep)) edges.append(edge(byName.get(dep), t));
    }
    root.append(edges, svg('g', { class: 'nodes' }, tasks.map((t) => node(t, onSelect))));
    return root;
  }

  return { render };
})();
