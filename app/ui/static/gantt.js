// The run's timeline: one row per task, one bar per attempt (its own lane, so retries and lost attempts
// are separate bars), from started_at to finished_at (or now), coloured by the attempt's outcome.
'use strict';

const TFGantt = (() => {
  const { h, fmtDuration, fmtTime, now } = TF;
  const STEPS = [0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 14400, 43200, 86400];

  const time = (iso) => (iso ? Date.parse(iso) : null);

  function span(run, tasks) {
    const starts = [time(run.created_at)];
    const ends = [run.finished_at ? time(run.finished_at) : now()];
    for (const t of tasks) {
      for (const a of t.attempts) {
        starts.push(time(a.started_at));
        ends.push(a.finished_at ? time(a.finished_at) : now());
      }
    }
    const start = Math.min(...starts.filter((v) => v !== null));
    const end = Math.max(...ends.filter((v) => v !== null), start + 1000);
    return { start, end };
  }

  function ticks(total) {
    const step = STEPS.find((s) => total / s <= 8) || STEPS[STEPS.length - 1];
    const out = [];
    for (let t = 0; t <= total + 1e-9; t += step) out.push(t);
    return out;
  }

  function tickLabel(seconds) {
    if (seconds === 0) return '0';
    if (seconds < 1) return `${Math.round(seconds * 1000)} ms`;
    if (seconds < 60) return `${+seconds.toFixed(1)} s`;
    if (seconds < 3600) return `${+(seconds / 60).toFixed(1)} m`;
    return `${+(seconds / 3600).toFixed(1)} h`;
  }

  // where the bar's label goes: inside a long bar, else beside it on the side with room
  const placement = (left, width) => (width > 45 ? 'inside' : (left + width > 70 ? 'before' : 'after'));

  function bar(t, a, range, onSelect) {
    const total = range.end - range.start;
    const startMs = time(a.started_at) ?? range.start;
    const endMs = a.finished_at ? time(a.finished_at) : Math.max(now(), startMs);
    const left = ((startMs - range.start) / total) * 100;
    const width = Math.max(0, ((endMs - startMs) / total) * 100);
    const seconds = (endMs - startMs) / 1000;
    const outcome = a.outcome;
    const label = `#${a.attempt} ${a.outcome.replace('_', ' ')} · ${fmtDuration(seconds)}`;
    const node = h('div', {
      class: `bar state-${outcome} outcome-${outcome} ${placement(left, width)}`,
      'data-task': t.name, 'data-attempt': a.attempt, 'data-outcome': a.outcome,
      title: [`${t.name} attempt ${a.attempt}: ${a.outcome}`, `started ${fmtTime(a.started_at)}`,
        a.finished_at ? `finished ${fmtTime(a.finished_at)}` : 'still running', a.worker ? `on ${a.worker}` : null,
        a.error ? `error: ${a.error}` : null].filter(Boolean).join('\n'),
      onclick: () => onSelect(t.id),
    }, h('span', { class: 'bar-label' }, label));
    node.style.left = `${Math.min(left, 99.5)}%`;
    node.style.width = `${Math.min(width, 100 - left)}%`;
    return h('div', { class: 'gantt-lane' }, node);
  }

  function row(t, range, selectedId, onSelect) {
    const lanes = t.attempts.length
      ? t.attempts.map((a) => bar(t, a, range, onSelect))
      : [h('div', { class: 'gantt-lane' }, h('span', { class: 'gantt-none' }, `${t.state} · no attempt`))];
    return h('div', { class: `gantt-row${t.id === selectedId ? ' selected' : ''}`, 'data-task': t.name },
      h('div', { class: 'gantt-label', title: t.name, onclick: () => onSelect(t.id) }, t.name),
      h('div', { class: 'gantt-track' }, lanes));
  }

  // the time axis and its gridlines over [range.start, range.end] (ms): the first two children of a timeline
  function axis(range) {
    const total = (range.end - range.start) / 1000;
    const marks = ticks(total);
    const pos = (s) => `${(s / total) * 100}%`;
    const scale = h('div', { class: 'gantt-axis' }, h('div', { class: 'muted' }, fmtTime(new Date(range.start).toISOString())),
      h('div', { class: 'ticks' }, marks.map((s) => {
        const tick = h('span', { class: (s / total) > 0.94 ? 'tick last' : 'tick' }, tickLabel(s));
        tick.style.left = pos(s);
        return tick;
      })));
    const grid = h('div', { class: 'gantt-grid' }, marks.map((s) => {
      const line = h('div', { class: 'gridline' });
      line.style.left = pos(s);
      return line;
    }));
    return [grid, scale];
  }

  function render(container, run, tasks, selectedId, onSelect) {
    const range = span(run, tasks);
    const ordered = [...tasks].sort((a, b) => a.layer - b.layer || a.row - b.row);
    container.replaceChildren(...axis(range), ...ordered.map((t) => row(t, range, selectedId, onSelect)));
  }

  // the code run page (coderun.js) draws its steps with the same axis, attempt bars and placement rule
  return { render, axis, bar, placement };
})();
