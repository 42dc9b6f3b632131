// The runs list: filters and paging live in the URL query; the table refreshes itself every 2 s.
'use strict';

(() => {
  const { api, h, badge, fmtTime, fmtDuration, elapsed, loop, showAlert } = TF;
  const $ = (id) => document.getElementById(id);
  const KEYS = ['workflow', 'kind', 'state', 'before', 'limit'];
  const REFRESH_MS = 2000;

  let query = readQuery();
  let generation = 0; // answers to superseded requests are dropped
  let nextBefore = null;

  function readQuery() {
    const params = new URLSearchParams(location.search);
    return Object.fromEntries(KEYS.map((k) => [k, params.get(k) || '']));
  }

  function writeQuery() {
    const params = new URLSearchParams();
    for (const k of KEYS) if (query[k]) params.set(k, query[k]);
    const search = params.toString();
    history.pushState(null, '', search ? `?${search}` : location.pathname);
  }

  function apiQuery() {
    const params = new URLSearchParams({ limit: query.limit || '50' });
    for (const k of ['workflow', 'kind', 'state', 'before']) if (query[k]) params.set(k, query[k]);
    return params.toString();
  }

  function row(run) {
    const duration = run.duration !== null
      ? fmtDuration(run.duration)
      : (run.state === 'running' ? `${fmtDuration(elapsed(run.created_at))}…` : '—');
    // a child run names its parent (a subworkflow task's or a code workflow's child)
    const parent = run.parent_run_id ? h('div', { class: 'parent-ref muted' }, 'child of ',
      h('a', { class: 'parent-link', href: `/runs/${run.parent_run_id}` }, `#${run.parent_run_id}`)) : null;
    return h('tr', { 'data-run-id': run.id, 'data-state': run.state, 'data-kind': run.kind },
      h('td', {}, h('a', { class: 'run-link', href: `/runs/${run.id}` }, `#${run.id}`), parent),
      h('td', {}, h('a', { href: `?workflow=${encodeURIComponent(run.workflow)}`, title: 'Only this workflow' },
        run.workflow), ' ', h('span', { class: `kind kind-${run.kind}` }, run.kind)),
      h('td', {}, badge(run.state)),
      h('td', { class: 'num' }, run.priority),
      h('td', { class: 'time', title: run.created_at || '' }, fmtTime(run.created_at)),
      h('td', { class: 'num' }, duration),
      // whole: it names the cause (the failing task and its error, a blocked run's divergence)
      h('td', { class: 'run-error' }, run.error || ''));
  }

  function render(page) {
    $('runs-body').replaceChildren(...page.items.map(row));
    $('empty').hidden = page.items.length > 0;
    nextBefore = page.next_before;
    $('older-btn').disabled = nextBefore === null;
    $('newest-btn').hidden = !query.before;
  }

  async function refresh() {
    const mine = ++generation;
    try {
      const page = await api(`/api/runs?${apiQuery()}`);
      if (mine !== generation) return;
      render(page);
      showAlert($('error'), null);
      $('live-text').textContent = `Live · updated ${fmtTime(new Date().toISOString()).slice(11)}`;
    } catch (err) {
      if (mine === generation) showAlert($('error'), `Could not load runs: ${err.message}`);
    }
  }

  const poller = loop(refresh, REFRESH_MS);

  function setPaused(paused) {
    if (paused) poller.stop(); else poller.start();
    $('live').classList.toggle('on', !paused);
    $('live').dataset.paused = paused ? 'true' : 'false';
    $('pause-btn').textContent = paused ? 'Resume' : 'Pause';
    if (paused) $('live-text').textContent = 'Paused';
  }

  function changed() {
    writeQuery();
    syncControls();
    $('runs-body').replaceChildren();
    reload();
  }

  function reload() {
    if (poller.active) poller.kick(); else refresh();
  }

  function syncControls() {
    const select = $('f-workflow');
    if (query.workflow && ![...select.options].some((o) => o.value === query.workflow)) {
      select.append(h('option', { value: query.workflow }, query.workflow));
    }
    select.value = query.workflow;
    $('f-state').value = query.state;
    $('f-kind').value = query.kind;
  }

  async function loadWorkflows() {
    try {
      const workflows = await api('/api/workflows');
      const names = [...new Set(workflows.map((w) => w.name))].sort();
      const select = $('f-workflow');
      select.replaceChildren(h('option', { value: '' }, 'All workflows'), ...names.map((n) => h('option', { value: n }, n)));
      syncControls();
    } catch (err) {
      showAlert($('error'), `Could not load workflows: ${err.message}`);
    }
  }

  $('f-workflow').addEventListener('change', (e) => { query = { ...query, workflow: e.target.value, before: '' }; changed(); });
  $('f-state').addEventListener('change', (e) => { query = { ...query, state: e.target.value, before: '' }; changed(); });
  $('f-kind').addEventListener('change', (e) => { query = { ...query, kind: e.target.value, before: '' }; changed(); });
  $('filters').addEventListener('submit', (e) => e.preventDefault());
  $('older-btn').addEventListener('click', () => {
    if (nextBefore !== null) { query = { ...query, before: String(nextBefore) }; changed(); }
  });
  $('newest-btn').addEventListener('click', () => { query = { ...query, before: '' }; changed(); });
  $('pause-btn').addEventListener('click', () => setPaused(poller.active));
  window.addEventListener('popstate', () => { query = readQuery(); syncControls(); reload(); });

  syncControls();
  loadWorkflows();
  setPaused(false);
})();
