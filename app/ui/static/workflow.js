// A workflow's page: what it is (a DAG's versions and definition, a code workflow's module and function), a
// "start run" form built from its declared parameters, and the grid of its recent runs x tasks (Airflow's grid),
// refreshed every few seconds.
'use strict';

(() => {
  const { api, h, fmtTime, fmtDuration, loop, showAlert } = TF;
  const $ = (id) => document.getElementById(id);
  const name = decodeURIComponent(location.pathname.split('/')[2] || '');
  const path = `/api/workflows/${encodeURIComponent(name)}`;
  const GRID_RUNS = 25;
  const POLL_MS = 3000;
  const TASK_STATES = ['pending', 'submitted', 'running', 'succeeded', 'failed', 'skipped', 'cancelled'];

  let workflow = null; // the view of the version shown
  let version = Number(new URLSearchParams(location.search).get('version')) || null; // null: the latest
  let gridKey = null;
  let starting = false;

  const latest = () => (workflow && workflow.versions ? workflow.versions[workflow.versions.length - 1] : null);
  const plural = (n, word) => `${n} ${word}${n === 1 ? '' : 's'}`;

  // the stored view; a code workflow no run has stored yet has none: its entry in the list (what this process
  // registered) stands in
  async function fetchWorkflow() {
    try {
      return await api(version ? `${path}?version=${version}` : path);
    } catch (err) {
      if (err.status !== 404 || version) throw err;
    }
    const listed = (await api('/api/workflows')).find((w) => w.name === name);
    if (!listed) throw new TF.ApiError(404, `Workflow '${name}' is not registered.`);
    return listed;
  }

  function renderHeader() {
    const w = workflow;
    document.title = `${w.name} · Workflows · Tideflow`;
    $('crumb').textContent = w.name;
    $('title').replaceChildren(h('span', { id: 'workflow-name' }, w.name), h('span', { class: `kind kind-${w.kind}` }, w.kind));
    $('subtitle').textContent = w.kind === 'code' ? `${w.module}:${w.function}`
      : `version ${w.version}${w.versions ? ` of ${w.versions.length}` : ''} · ${plural(w.tasks, 'task')}`;
    $('runs-link').setAttribute('href', `/?workflow=${encodeURIComponent(w.name)}`);
    const items = [['Kind', w.kind === 'code' ? 'code (a @tideflow.workflow function)' : 'DAG (a registered definition)']];
    if (w.kind === 'code') {
      items.push(['Module', h('code', { id: 'code-module' }, w.module)], ['Function', h('code', { id: 'code-function' }, w.function)]);
      items.push(['Stored version', w.version ?? 'none yet (no run has stored it)']);
    } else {
      items.push(['Version', w.version], ['Tasks', w.tasks]);
    }
    items.push(['Registered', fmtTime(w.created_at)], ['Digest', h('code', {}, w.digest)]);
    $('meta').replaceChildren(...items.map(([k, v]) => h('div', {}, h('dt', {}, k), h('dd', {}, v))));

    const versions = w.versions || [];
    $('version-box').hidden = w.kind === 'code' || versions.length === 0;
    $('version').replaceChildren(...[...versions].reverse().map((v) => h('option', { value: v },
      v === versions[versions.length - 1] ? `${v} (latest)` : String(v))));
    $('version').value = String(w.version);

    const showDefinition = w.kind !== 'code' && w.definition;
    $('definition-card').hidden = !showDefinition;
    if (showDefinition) {
      $('definition-title').textContent = `Definition (version ${w.version})`;
      $('definition').textContent = JSON.stringify(w.definition, null, 2);
    }
  }

  function renderForm() {
    const parameters = TFParams.declared(workflow);
    $('start-fields').replaceChildren(...(parameters.length ? TFParams.fields(parameters)
      : [h('p', { class: 'muted', id: 'no-params' }, 'This workflow declares no parameters.')]));
    const old = workflow.version && latest() && workflow.version !== latest();
    $('start-note').textContent = old ? `starts version ${workflow.version} (not the latest)` : '';
    showError(null);
  }

  function showError(message) {
    $('start-error').hidden = !message;
    $('start-error').textContent = message || '';
  }

  async function start(event) {
    event.preventDefault();
    if (starting || !workflow) return;
    let params;
    try {
      params = TFParams.read($('start-form'), TFParams.declared(workflow));
    } catch (err) {
      showError(err.message);
      return;
    }
    const body = { workflow: name, params };
    if (workflow.version && latest() && workflow.version !== latest()) body.version = workflow.version;
    const key = $('start-key').value.trim();
    if (key) body.key = key;
    const priority = $('start-priority').value.trim();
    if (priority !== '') body.priority = Number(priority);
    starting = true;
    $('start-btn').disabled = true;
    showError(null);
    try {
      const run = await api('/api/runs', { method: 'POST', body });
      location.assign(`/runs/${run.id}`);
    } catch (err) {
      showError(String(err.message).split('\n')[0]);
      $('start-btn').disabled = false;
    } finally {
      starting = false;
    }
  }

  function gridCell(run, cell, task) {
    if (!cell) return h('td', { class: 'grid-td' }, h('span', { class: 'grid-cell none', title: `no ${task} in run #${run.id}` }));
    return h('td', { class: 'grid-td' }, h('a', {
      class: `grid-cell state-${cell.state}`, href: `/runs/${run.id}#task-${cell.task_run_id}`,
      'data-run-id': run.id, 'data-task': task, 'data-state': cell.state,
      title: `${task} · run #${run.id} · ${cell.state}${cell.attempt > 1 ? ` · attempt ${cell.attempt}` : ''}`,
    }));
  }

  function renderGrid(grid) {
    if (!grid.runs.length) {
      $('grid').replaceChildren(h('p', { class: 'muted', id: 'grid-empty' }, 'No runs yet: start one above.'));
      return;
    }
    const head = h('tr', {}, h('th', { class: 'grid-task' }, h('span', { class: 'muted' }, `${plural(grid.runs.length, 'run')}, oldest first`)),
      ...grid.runs.map((r) => h('th', { class: 'grid-th' }, h('a', {
        class: `grid-run state-${r.state}`, href: `/runs/${r.id}`, 'data-run-id': r.id, 'data-state': r.state,
        title: `run #${r.id} · ${r.state} · ${fmtTime(r.created_at)} · ${r.duration !== null ? fmtDuration(r.duration) : 'running'}`
          + (r.version ? ` · version ${r.version}` : ''),
      }, h('span', { class: 'grid-bar' }), h('span', { class: 'grid-id' }, `#${r.id}`)))));
    const rows = grid.tasks.map((t) => h('tr', { 'data-task': t.name },
      h('th', { class: 'grid-task', title: t.name }, t.name),
      ...t.cells.map((c, i) => gridCell(grid.runs[i], c, t.name))));
    $('grid').replaceChildren(h('table', { class: 'grid', id: 'grid-table' }, h('thead', {}, head), h('tbody', {}, rows)));
  }

  async function refreshGrid() {
    try {
      const grid = await api(`${path}/grid?limit=${GRID_RUNS}`);
      const key = JSON.stringify(grid);
      if (key !== gridKey) {
        gridKey = key;
        renderGrid(grid);
      }
      $('live').classList.add('on');
      $('live-text').textContent = `Live · updated ${fmtTime(new Date().toISOString()).slice(11)}`;
      showAlert($('error'), null);
    } catch (err) {
      showAlert($('error'), `Could not load the recent runs: ${err.message}`);
      return err.status !== 404;
    }
    return true;
  }

  async function loadWorkflow() {
    try {
      workflow = await fetchWorkflow();
    } catch (err) {
      showAlert($('error'), err.status === 404 ? (version ? `Workflow '${name}' has no version ${version}.`
        : `Workflow '${name}' is not registered.`) : `Could not load the workflow: ${err.message}`);
      if (err.status === 404) $('title').textContent = 'Workflow not found';
      $('start-card').hidden = true;
      return false;
    }
    $('start-card').hidden = false;
    renderHeader();
    renderForm();
    return true;
  }

  $('version').addEventListener('change', async (e) => {
    const chosen = Number(e.target.value);
    version = chosen === latest() ? null : chosen;
    history.replaceState(null, '', version ? `?version=${version}` : location.pathname);
    await loadWorkflow();
  });
  $('start-form').addEventListener('submit', start);
  $('grid-legend').replaceChildren(...TASK_STATES.map((n) => h('span', { class: `state-${n}` }, n)));

  const poller = loop(refreshGrid, POLL_MS);
  loadWorkflow().then((ok) => { if (ok) poller.start(); });
})();
