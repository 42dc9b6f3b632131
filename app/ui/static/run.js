// The run page: header and actions, DAG, timeline, tasks, task logs and history. Polls the run every
// second until it is finished (again after a retry).
'use strict';

(() => {
  const { api, h, badge, fmtTime, fmtDuration, elapsed, loop, showAlert, TERMINAL } = TF;
  const $ = (id) => document.getElementById(id);
  const runId = Number(location.pathname.split('/')[2]);
  const POLL_MS = 1000;
  const TASK_STATES = ['pending', 'submitted', 'running', 'succeeded', 'failed', 'skipped', 'cancelled'];
  const OUTCOMES = ['running', 'succeeded', 'failed', 'timed_out', 'lost', 'cancelled'];

  let run = null;
  let selectedId = Number((location.hash.match(/^#task-(\d+)$/) || [])[1]) || null;
  let logsKey = null;
  let logsShape = null; // what the rendered logs show besides the output (attempts and their outcomes)
  let historyKey = null;
  let acting = false;
  let parent; // undefined: not looked up yet; null: none or unknown; else {run_id, name}

  const legend = (id, names) => $(id).replaceChildren(
    ...names.map((n) => h('span', { class: `state-${n}` }, n.replace('_', ' '))));
  const ordered = (tasks) => [...tasks].sort((a, b) => a.layer - b.layer || a.row - b.row);
  const runLink = (id, text) => h('a', { href: `/runs/${id}`, class: 'run-ref' }, text || `#${id}`);

  function counts(tasks) {
    const n = {};
    for (const t of tasks) n[t.state] = (n[t.state] || 0) + 1;
    return TASK_STATES.filter((s) => n[s]).map((s) => `${n[s]} ${s}`).join(' · ') || 'no tasks';
  }

  function renderHeader() {
    document.title = `#${run.id} ${run.workflow} · Tideflow`;
    $('crumb').textContent = `Run #${run.id}`;
    $('title').replaceChildren(h('a', { id: 'run-workflow', href: `/workflows/${encodeURIComponent(run.workflow)}`,
      title: 'The workflow: versions, start form, recent runs' }, run.workflow),
      h('span', { class: 'muted' }, `#${run.id}`), badge(run.state));
    $('subtitle').textContent = `version ${run.workflow_version ?? '?'} · priority ${run.priority}`;
    const duration = run.duration !== null ? fmtDuration(run.duration)
      : `${fmtDuration(elapsed(run.created_at))}${TERMINAL.has(run.state) ? '' : ' so far'}`;
    const children = run.tasks.filter((t) => t.child_run_id);
    const items = [
      ['Created', fmtTime(run.created_at)],
      ['Finished', fmtTime(run.finished_at)],
      ['Duration', duration],
      ['Tasks', counts(run.tasks), 'wide'],
    ];
    // limits: a queued run says why it has not started (max_active_runs)
    if (run.waiting_for) items.push(['Queued', h('span', { id: 'run-waiting-for' }, `waiting for ${run.waiting_for}`), 'wide']);
    if (run.parent_task_run_id) {
      items.push(['Parent run', parent ? h('span', {}, runLink(parent.run_id), ` (task ${parent.name})`)
        : `task run ${run.parent_task_run_id}`]);
    }
    if (children.length) {
      items.push(['Child runs', children.flatMap((t, i) => [i ? ', ' : null, runLink(t.child_run_id),
        ` (${t.name})`])]);
    }
    $('meta').replaceChildren(...items.map(([k, v, cls]) => h('div', { class: cls }, h('dt', {}, k), h('dd', {}, v))));
    $('run-error-box').hidden = !run.error;
    $('run-error').textContent = run.error || '';
    const params = JSON.stringify(run.params, null, 2);
    if ($('params').textContent !== params) $('params').textContent = params;
  }

  function renderControls(polling) {
    const code = run.kind === 'code';  // a blocked code run can be cancelled; a code run is not retried
    $('cancel-btn').disabled = acting
      || !(run.state === 'running' || run.state === 'paused' || run.state === 'queued' || (code && run.state === 'blocked'));
    $('retry-btn').hidden = code;
    $('retry-btn').disabled = acting || !['failed', 'cancelled'].includes(run.state);
    // run pause / resume (a blocked code run is resumed from its divergence box)
    $('pause-btn').hidden = run.state !== 'running';
    $('pause-btn').disabled = acting || run.state !== 'running';
    $('unpause-btn').hidden = run.state !== 'paused';
    $('unpause-btn').disabled = acting || run.state !== 'paused';
    $('live').classList.toggle('on', polling);
    $('live-text').textContent = run.state === 'paused' ? 'Paused' : polling ? 'Live' : 'Finished';
    renderTaskActions();
  }

  // the selected task's commands: force-success a failed task (with a result), rerun a task of a finished run.
  // A code run's step: force-success of a failed activity step, rerun (a reset to its position) in a finished
  // run; a step a reset superseded offers neither
  function renderTaskActions() {
    const t = run && run.tasks.find((x) => x.id === selectedId);
    const code = Boolean(run) && run.kind === 'code';
    const live = Boolean(t) && !t.superseded_at;
    const force = live && t.state === 'failed' && (code
      ? t.type === 'activity' && run.state !== 'blocked' && run.state !== 'queued'
      : ['running', 'paused', 'failed'].includes(run.state));
    const rerun = live && TERMINAL.has(run.state);
    $('force-success-btn').hidden = $('force-result').hidden = !force;
    $('rerun-btn').hidden = !rerun;
    $('force-success-btn').disabled = $('rerun-btn').disabled = acting;
    $('task-actions').hidden = !force && !rerun;
  }

  function taskRow(t) {
    const duration = t.duration !== null ? fmtDuration(t.duration)
      : (t.started_at && t.state === 'running' ? `${fmtDuration(elapsed(t.started_at))}…` : '—');
    return h('tr', {
      class: `clickable${t.id === selectedId ? ' selected' : ''}${t.superseded_at ? ' superseded-row' : ''}`,
      'data-task': t.name, 'data-task-id': t.id, 'data-state': t.state,
      'data-superseded': t.superseded_at ? 'true' : 'false', onclick: () => select(t.id),
    },
    h('td', {}, h('strong', {}, t.name), t.superseded_at
      ? h('span', { class: 'muted superseded', title: `superseded by a reset ${fmtTime(t.superseded_at)}` },
        ' superseded') : null),
    h('td', {}, t.type),
    h('td', t.skip_reason ? { title: t.skip_reason } : {}, badge(t.state), t.waiting_for  // limits: a task a full pool holds back says so
      ? h('div', { class: 'muted waiting-for' }, `waiting for ${t.waiting_for}`) : null),
    h('td', { class: 'num' }, t.attempt),
    h('td', {}, t.worker || '—'),
    h('td', { class: 'time' }, fmtTime(t.started_at)),
    h('td', { class: 'num' }, duration),
    h('td', {}, t.child_run_id ? runLink(t.child_run_id) : '—'));
  }

  function render(polling) {
    renderHeader();
    renderControls(polling);
    const tasks = ordered(run.tasks);
    const code = run.kind === 'code';
    for (const id of ['graph-card', 'gantt-card']) $(id).hidden = code;
    for (const id of ['code-card', 'code-timeline-card']) $(id).hidden = !code;
    if (code) {
      TFCode.render(run, selectedId, select, runLink);
    } else {
      TFDag.render($('dag'), tasks, selectedId, select);
      TFGantt.render($('gantt'), run, tasks, selectedId, select);
    }
    $('tasks-body').replaceChildren(...tasks.map(taskRow));
  }

  function select(taskId) {
    selectedId = taskId;
    history.replaceState(null, '', `#task-${taskId}`);
    if (run) render(poller.active);
    loadLogs(true);
    $('task-card').scrollIntoView({ block: 'nearest' });
  }

  const logText = (a) => a.log || (a.outcome === 'running' ? '(no output yet)' : '(no output)');

  function attemptLog(a) {
    return h('div', { class: 'attempt-log', 'data-attempt': a.attempt },
      h('div', { class: 'attempt-head' }, h('strong', {}, `Attempt ${a.attempt}`), badge(a.outcome),
        a.worker ? h('span', { class: 'muted' }, a.worker) : null),
      a.error ? h('div', { class: 'alert alert-error attempt-error' }, a.error) : null,
      a.outcome === 'running' ? h('div', { class: 'muted log-live' }, 'Live: the output so far, refreshed while it runs')
        : null,
      h('pre', { class: 'log', 'data-attempt': a.attempt }, logText(a)));
  }

  // only a running attempt's output changed since the last render: update its text in place (the reader's
  // scroll position and selection stay; a log scrolled to its end follows the new lines)
  function updateLiveLogs(attempts) {
    for (const a of attempts) {
      const pre = $('task-detail').querySelector(`pre.log[data-attempt="${a.attempt}"]`);
      const text = logText(a);
      if (!pre || pre.textContent === text) continue;
      const atEnd = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
      pre.textContent = text;
      if (atEnd) pre.scrollTop = pre.scrollHeight;
    }
  }

  async function loadLogs(force) {
    const t = run && run.tasks.find((x) => x.id === selectedId);
    if (!t) return;
    const key = `${t.id}:${t.state}:${t.attempt}:${t.attempts.map((a) => a.outcome).join(',')}`;
    // a running attempt's output grows (the worker's heartbeat stores it): fetched again at every poll
    const live = t.attempts.some((a) => a.outcome === 'running');
    if (!force && !live && key === logsKey) return;
    const same = !force && key === logsKey;
    logsKey = key;
    $('task-title').textContent = `Task ${t.name}`;
    $('task-state').replaceChildren(badge(t.state));
    let data;
    try {
      data = await api(`/api/tasks/${t.id}/logs`);
    } catch (err) {
      logsKey = null;
      $('task-detail').replaceChildren(h('div', { class: 'alert alert-error' }, `Could not load logs: ${err.message}`));
      return;
    }
    if (selectedId !== t.id) return;
    const shape = `${key}:${data.attempts.map((a) => `${a.attempt}/${a.outcome}`).join(',')}`;
    if (same && shape === logsShape) {
      updateLiveLogs(data.attempts);
      return;
    }
    logsShape = shape;
    const rule = t.trigger_rule && t.trigger_rule !== 'all_success' ? ` · trigger rule ${t.trigger_rule}` : '';
    const parts = [h('div', { class: 'muted' }, `${t.type} task · queue ${t.queue} · priority ${t.priority}${rule}`,
      t.child_run_id ? [' · child run ', runLink(t.child_run_id)] : null)];
    if (t.when) parts.push(h('div', { class: 'muted task-when' }, `when: ${t.when}`));
    // a skipped task says why (a false condition, a branch its switch did not choose, its trigger rule)
    if (t.skip_reason) parts.push(h('h3', {}, 'Skipped'), h('div', { class: 'alert alert-skip skip-reason' }, t.skip_reason));
    const repeated = data.attempts.some((a) => a.error === t.error) || t.error === t.skip_reason;  // shown already
    if (t.error && t.state !== 'succeeded' && !repeated) parts.push(h('h3', {}, 'Error'), h('div', { class: 'alert alert-error' }, t.error));
    if (t.result !== null && t.result !== undefined) {
      parts.push(h('h3', {}, 'Result'), h('pre', { class: 'code task-result' }, JSON.stringify(t.result, null, 2)));
    }
    parts.push(h('h3', {}, 'Logs'));
    if (!data.attempts.length) parts.push(h('p', { class: 'muted' }, 'No attempt yet.'));
    parts.push(...data.attempts.map(attemptLog));
    $('task-detail').replaceChildren(...parts);
  }

  async function loadHistory() {
    const events = await api(`/api/runs/${runId}/history`);
    const key = `${events.length}:${events.length ? events[events.length - 1].id : ''}`;
    if (key === historyKey) return;
    historyKey = key;
    $('history-count').textContent = `${events.length} events`;
    $('history-body').replaceChildren(...events.map((e) => h('tr', { 'data-event-id': e.id },
      h('td', { class: 'time' }, fmtTime(e.at, true)),
      h('td', {}, e.task || h('span', { class: 'muted' }, 'run')),
      h('td', { class: 'num' }, e.attempt ?? ''),
      h('td', { class: 'time' }, e.from ? badge(e.from) : h('span', { class: 'muted' }, 'new'), ' → ', badge(e.to)),
      h('td', {}, e.actor),
      h('td', {}, e.reason))));
  }

  async function loadParent() {
    if (parent !== undefined || !run.parent_task_run_id) return;
    try {
      const task = await api(`/api/tasks/${run.parent_task_run_id}/logs`);
      parent = { run_id: task.run_id, name: task.name };
    } catch (err) {
      parent = null;
    }
    renderHeader();
  }

  async function refresh() {
    try {
      run = await api(`/api/runs/${runId}`);
    } catch (err) {
      const gone = err.status === 404 || err.status === 422;
      showAlert($('error'), gone ? `Run ${runId} does not exist.` : `Could not load the run: ${err.message}`);
      if (gone) $('title').textContent = 'Run not found';
      return !gone;
    }
    showAlert($('error'), null);
    const more = !TERMINAL.has(run.state);
    render(more);
    await Promise.all([
      loadHistory().catch((err) => showAlert($('error'), `Could not load the history: ${err.message}`)),
      loadLogs(false), loadParent()]);
    if (!more) renderControls(false);
    return more;
  }

  const poller = loop(refresh, POLL_MS);

  const DOING = { cancel: 'Cancelling…', retry: 'Retrying…', pause: 'Pausing…', resume: 'Resuming…' };

  async function act(kind) {
    acting = true;
    renderControls(poller.active);
    showAlert($('action-msg'), DOING[kind], 'ok');
    try {
      const result = await api(`/api/runs/${runId}/${kind}`, { method: 'POST' });
      showAlert($('action-msg'), {
        cancel: 'Run cancelled.',
        retry: `Run restarted: ${result.reset} task(s) reset to pending.`,
        pause: 'Run paused: no new task starts until it is resumed; running tasks finish.',
        resume: `Run resumed: it is ${result.state}.`,
      }[kind], 'ok');
    } catch (err) {
      showAlert($('action-msg'), `Could not ${kind} the run: ${err.message}`, 'error');
    } finally {
      acting = false;
    }
    logsKey = null;
    poller.kick();
  }

  // the forced result typed in the task panel: JSON, empty for null (undefined: not JSON, said in the panel)
  function forcedResult() {
    const raw = $('force-result').value.trim();
    if (!raw) return null;
    try {
      return JSON.parse(raw);
    } catch (err) {
      showAlert($('task-action-msg'), `The result is not JSON: ${err.message}`, 'error');
      return undefined;
    }
  }

  // a task command (POST /api/tasks/{id}/force-success | rerun): answers with the task's run
  async function actOnTask(kind, t, body) {
    acting = true;
    renderControls(poller.active);
    showAlert($('task-action-msg'), kind === 'rerun' ? 'Rerunning…' : 'Marking succeeded…', 'ok');
    try {
      const result = await api(`/api/tasks/${t.id}/${kind}`, body === undefined ? { method: 'POST' }
        : { method: 'POST', body });
      showAlert($('task-action-msg'), kind === 'rerun'
        ? `Rerunning from task ${t.name}: the run is ${result.state}.`
        : `Task ${t.name} marked succeeded: the run is ${result.state}.`, 'ok');
    } catch (err) {
      showAlert($('task-action-msg'), `Could not ${kind === 'rerun' ? 'rerun' : 'force-success'} task ${t.name}: `
        + err.message, 'error');
    } finally {
      acting = false;
    }
    logsKey = null;
    poller.kick();  // polls again (a finished run that runs again is followed until it finishes)
  }

  // destructive actions ask first (what will happen, to which run)
  async function confirmed(kind) {
    const name = run ? `#${run.id} ${run.workflow}` : `#${runId}`;
    const t = run && run.tasks.find((x) => x.id === selectedId);
    switch (kind) {
      case 'cancel':
        return TF.confirmAction(`Cancel run ${name}?`, 'Its pending tasks will never start and its running tasks '
          + 'are stopped. This cannot be undone (a cancelled run can be retried).', 'Cancel run');
      case 'pause':
        return TF.confirmAction(`Pause run ${name}?`, 'No new task starts until the run is resumed; tasks already '
          + 'running finish.', 'Pause run', { danger: false });
      case 'resume':
        return TF.confirmAction(`Resume run ${name}?`, 'Tasks that were waiting start again and the run goes on.',
          'Resume run', { danger: false });
      case 'force-success':
        if (run.kind === 'code') {
          return TF.confirmAction(`Mark step ${t.name} succeeded?`, `Step ${t.name} of run ${name} failed; it is `
            + `recorded as succeeded with the result ${$('force-result').value.trim() || 'null'} and the run is `
            + 'replayed: the workflow gets that result at this step. Steps recorded after it are superseded (kept '
            + 'in the history) and run again.', 'Mark succeeded');
        }
        return TF.confirmAction(`Mark task ${t.name} succeeded?`, `Task ${t.name} of run ${name} failed; it is `
          + 'recorded as succeeded (with the result given, or none) and the tasks downstream of it run. A failed run '
          + 'runs again.', 'Mark succeeded');
      case 'rerun':
        if (run.kind === 'code') {
          return TF.confirmAction(`Reset run ${name} to step ${t.name}?`, `Step ${t.name} and every step after it `
            + 'are superseded (kept in the history) and run anew; the steps before it keep their results. The run '
            + 'is running again.', 'Rerun', { danger: false });
        }
        return TF.confirmAction(`Rerun run ${name} from task ${t.name}?`, `Task ${t.name} and every task downstream `
          + 'of it run again as new attempts (earlier attempts stay in the history); the run is running again.',
        'Rerun', { danger: false });
      default:
        return TF.confirmAction(`Retry run ${name}?`, 'Its failed, cancelled and skipped tasks are reset to pending '
          + 'and run again; succeeded tasks keep their results.', 'Retry run', { danger: false });
    }
  }

  $('cancel-btn').addEventListener('click', async () => { if (await confirmed('cancel')) act('cancel'); });
  $('retry-btn').addEventListener('click', async () => { if (await confirmed('retry')) act('retry'); });
  $('pause-btn').addEventListener('click', async () => { if (await confirmed('pause')) act('pause'); });
  $('unpause-btn').addEventListener('click', async () => { if (await confirmed('resume')) act('resume'); });
  for (const kind of ['force-success', 'rerun']) {
    $(`${kind}-btn`).addEventListener('click', async () => {
      const t = run && run.tasks.find((x) => x.id === selectedId);
      const body = kind === 'force-success' ? { result: forcedResult() } : undefined;
      if (body && body.result === undefined) return;
      if (t && await confirmed(kind)) actOnTask(kind, t, body);
    });
  }
  TFCode.init({ runId, changed: () => { logsKey = null; poller.kick(); } });
  legend('dag-legend', TASK_STATES);
  legend('code-legend', TASK_STATES);
  legend('gantt-legend', OUTCOMES);
  poller.start();
})();
