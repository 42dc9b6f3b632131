// The code run part of the run page (run.js calls it when run.kind is "code"): the current wait in words, a
// blocked run's divergence and Resume, the published state and result, the "send signal" form, and a timeline
// of the steps in position order: activities with one bar per attempt, timers as spans to their due time,
// signal waits as spans (to their timeout, if any), children as spans linking to their run page; below them, the
// steps a reset (task rerun, force-success) superseded, greyed. Selecting a step opens the task panel, whose
// buttons force a failed activity step to success (with a result) and rerun a finished run from a step.
'use strict';

const TFCode = (() => {
  const { api, h, fmtTime, fmtDuration, now, showAlert, TERMINAL } = TF;
  const $ = (id) => document.getElementById(id);
  const time = (iso) => (iso ? Date.parse(iso) : null);
  let hooks = null; // {runId, changed(): refresh the page now}
  let busy = false;

  function json(value) {
    return JSON.stringify(value === undefined ? null : value, null, 2);
  }

  function setText(id, text) {
    if ($(id).textContent !== text) $(id).textContent = text;
  }

  // -- timeline --------------------------------------------------------------------------------------

  function range(run) {
    const starts = [time(run.created_at)];
    const ends = [run.finished_at ? time(run.finished_at) : now()];
    for (const st of run.steps.concat(run.superseded_steps || [])) {
      starts.push(time(st.started_at), time(st.created_at));
      ends.push(time(st.finished_at), time(st.due_at));
      for (const a of st.attempts) ends.push(a.finished_at ? time(a.finished_at) : now());
    }
    const start = Math.min(...starts.filter((v) => v !== null));
    return { start, end: Math.max(...ends.filter((v) => v !== null), start + 1000) };
  }

  // a span from `from` to `to` (ms) on the track: a timer to its due time, a wait, a child run
  function span(st, from, to, r, label, extra) {
    const total = r.end - r.start;
    const left = ((from - r.start) / total) * 100;
    const width = Math.max(0, ((to - from) / total) * 100);
    const node = h('div', {
      class: `bar span state-${st.state} ${st.state === 'running' ? 'outcome-running ' : ''}`
        + TFGantt.placement(left, width),
      'data-seq': st.seq, 'data-kind': st.kind, 'data-state': st.state, title: extra.title,
      onclick: extra.onclick,
    }, h('span', { class: 'bar-label' }, label));
    node.style.left = `${Math.min(left, 99.5)}%`;
    node.style.width = `${Math.min(width, 100 - left)}%`;
    return h('div', { class: 'gantt-lane' }, node);
  }

  function lanes(st, r, select) {
    const task = { id: st.task_run_id, name: `${st.seq} ${st.name}` };
    const pick = () => select(st.task_run_id);
    const from = time(st.started_at) ?? time(st.created_at) ?? r.start;
    const until = st.finished_at ? time(st.finished_at) : now();
    if (st.kind === 'activity') {
      return st.attempts.length ? st.attempts.map((a) => TFGantt.bar(task, a, r, select))
        : [h('div', { class: 'gantt-lane' }, h('span', { class: 'gantt-none' }, `${st.state} · no attempt yet`))];
    }
    if (st.kind === 'timer') {
      const due = time(st.due_at) ?? until;
      const label = st.state === 'running' ? `sleeping until ${fmtTime(st.due_at)}` : `slept · ${st.state}`;
      return [span(st, from, st.finished_at ? until : Math.max(due, from), r, label,
        { title: `timer: ${st.state}, due ${fmtTime(st.due_at)}`, onclick: pick })];
    }
    if (st.kind === 'signal') {
      const label = st.state === 'running'
        ? `waiting for ${st.name}${st.due_at ? ` · timeout ${fmtTime(st.due_at)}` : ''}`
        : `${st.name} ${st.result === null && st.state === 'succeeded' ? 'timed out or empty' : st.state}`;
      const to = st.finished_at ? until : Math.max(time(st.due_at) ?? until, from);
      return [span(st, from, to, r, label, { title: `signal ${st.name}: ${st.state}`, onclick: pick })];
    }
    if (st.kind === 'subworkflow') {
      const label = st.child_run_id ? `child run #${st.child_run_id} · ${st.state}` : `${st.state}`;
      const go = st.child_run_id ? () => location.assign(`/runs/${st.child_run_id}`) : pick;
      return [span(st, from, until, r, label, { title: `child workflow ${st.name}`, onclick: go })];
    }
    const at = time(st.finished_at) ?? from;  // a marker: recorded at one instant
    return [span(st, at, at, r, `${st.name} = ${JSON.stringify(st.result)}`, { title: `marker ${st.name}`,
      onclick: pick })];
  }

  function timeline(run, selectedId, select, runLink) {
    const r = range(run);
    const rows = run.steps.map((st) => {
      const label = st.kind === 'subworkflow' && st.child_run_id
        ? [`${st.seq} ${st.name} `, runLink(st.child_run_id)] : `${st.seq} ${st.name}`;
      return h('div', {
        class: `gantt-row step-row${st.task_run_id === selectedId ? ' selected' : ''}`,
        'data-seq': st.seq, 'data-kind': st.kind, 'data-state': st.state,
      },
      h('div', { class: 'gantt-label', title: `${st.kind} ${st.name}`, onclick: () => select(st.task_run_id) },
        h('span', { class: `step-kind kind-${st.kind}` }, st.kind), ' ', label),
      h('div', { class: 'gantt-track' }, lanes(st, r, select)));
    });
    const empty = run.steps.length ? [] : [h('p', { class: 'muted' }, 'No step yet.')];
    // the steps resets superseded (task rerun, force-success): kept as they were, below the history they left
    const gone = (run.superseded_steps || []).map((st) => h('div', {
      class: `gantt-row superseded-row${st.task_run_id === selectedId ? ' selected' : ''}`,
      'data-seq': st.seq, 'data-kind': st.kind, 'data-state': st.state, 'data-task-id': st.task_run_id,
    },
    h('div', { class: 'gantt-label', title: `superseded ${fmtTime(st.superseded_at)}: ${st.kind} ${st.name}`,
      onclick: () => select(st.task_run_id) },
    h('span', { class: 'step-kind kind-superseded' }, 'superseded'), ' ', `${st.seq} ${st.name}`),
    h('div', { class: 'gantt-track' }, lanes(st, r, select))));
    const head = gone.length ? [h('p', { class: 'muted superseded-head' },
      `Superseded by a reset (${gone.length}): kept as they were; the steps above replaced them.`)] : [];
    $('code-timeline').replaceChildren(...TFGantt.axis(r), ...rows, ...empty, ...head, ...gone);
  }

  // -- the wait, the divergence, state and result ----------------------------------------------------

  function waitText(run) {
    if (run.waiting) return run.waiting.text;
    if (run.state === 'blocked') return 'blocked: the deployed code does not replay this run\'s history';
    if (run.state === 'running') return run.cancel_requested ? 'cancelling' : 'working (replaying its history)';
    return `finished: ${run.state}`;
  }

  function renderBlocked(run) {
    const b = run.blocked;
    $('code-blocked').hidden = !b;
    $('resume-btn').disabled = busy || !b;
    if (!b) return;
    const rows = [['Position', b.position ?? '—'], ['The history holds', b.history ?? '—'],
      ['The code asked for', b.asked ?? '—']];
    $('divergence').replaceChildren(...rows.map(([k, v]) => h('div', {}, h('dt', {}, k), h('dd', {}, String(v)))));
    setText('divergence-message', b.message || '');
  }

  function render(run, selectedId, select, runLink) {
    const waiting = $('code-waiting');
    setText('code-waiting', waitText(run));
    waiting.dataset.kind = run.waiting ? run.waiting.kind : run.state;
    renderBlocked(run);
    setText('code-state', json(run.state_values || {}));
    $('code-result-box').hidden = run.state !== 'succeeded';
    setText('code-result', json(run.result));
    const open = !TERMINAL.has(run.state);
    $('signal-send').disabled = busy || !open;
    const name = $('signal-name');
    if (!name.value && run.waiting && run.waiting.signal) name.value = run.waiting.signal;
    timeline(run, selectedId, select, runLink);
    setText('code-steps-count', `${run.steps.length} step${run.steps.length === 1 ? '' : 's'}`
      + (run.duration !== null ? ` · ${fmtDuration(run.duration)}` : ''));
  }

  // -- actions ---------------------------------------------------------------------------------------

  async function sendSignal(event) {
    event.preventDefault();
    const name = $('signal-name').value.trim();
    const raw = $('signal-data').value.trim();
    const key = $('signal-key').value.trim();
    let data = null;
    if (raw) {
      try {
        data = JSON.parse(raw);
      } catch (err) {
        showAlert($('signal-msg'), `The data is not JSON: ${err.message}`, 'error');
        return;
      }
    }
    if (!name) {
      showAlert($('signal-msg'), 'Name the signal (what the workflow waits for).', 'error');
      return;
    }
    busy = true;
    $('signal-send').disabled = true;
    try {
      const body = key ? { data, key } : { data };
      const sent = await api(`/api/runs/${hooks.runId}/signals/${encodeURIComponent(name)}`, { method: 'POST', body });
      showAlert($('signal-msg'), sent.created ? `Signal ${sent.name} sent (#${sent.id}).`
        : `Signal ${sent.name} with key ${key} was already sent (#${sent.id}): nothing new.`, 'ok');
      $('signal-data').value = '';
      $('signal-key').value = '';
    } catch (err) {
      showAlert($('signal-msg'), `Could not send the signal: ${err.message}`, 'error');
    } finally {
      busy = false;
    }
    hooks.changed();
  }

  async function resume() {
    busy = true;
    $('resume-btn').disabled = true;
    showAlert($('resume-msg'), 'Resuming…', 'ok');
    try {
      const run = await api(`/api/runs/${hooks.runId}/resume`, { method: 'POST' });
      showAlert($('resume-msg'), run.state === 'blocked'
        ? 'Still blocked: the deployed code still does not replay the history.' : `Resumed: the run is ${run.state}.`,
      run.state === 'blocked' ? 'error' : 'ok');
    } catch (err) {
      showAlert($('resume-msg'), `Could not resume the run: ${err.message}`, 'error');
    } finally {
      busy = false;
    }
    hooks.changed();
  }

  function init(options) {
    hooks = options;
    $('signal-form').addEventListener('submit', sendSignal);
    $('resume-btn').addEventListener('click', resume);
  }

  return { init, render };
})();
