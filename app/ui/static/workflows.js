// The workflows list: both kinds, each linking to its page (versions or code, start form, grid of recent runs).
'use strict';

(() => {
  const { api, h, fmtTime, showAlert } = TF;
  const $ = (id) => document.getElementById(id);

  function paramsText(w) {
    const declared = TFParams.declared(w);
    if (!declared.length) return h('span', { class: 'muted' }, 'none');
    return declared.flatMap((p, i) => [i ? ', ' : null,
      h('span', { class: 'param-name' }, p.name), h('span', { class: 'muted' }, `: ${p.type}`)]);
  }

  function row(w) {
    return h('tr', { 'data-workflow': w.name, 'data-kind': w.kind },
      h('td', {}, h('a', { class: 'workflow-link', href: `/workflows/${encodeURIComponent(w.name)}` }, w.name)),
      h('td', {}, h('span', { class: `kind kind-${w.kind}` }, w.kind)),
      h('td', { class: 'num' }, w.version ?? h('span', { class: 'muted', title: 'no run has stored it yet' }, '—')),
      h('td', {}, w.kind === 'code' ? h('code', {}, `${w.module}:${w.function}`)
        : `${w.tasks} task${w.tasks === 1 ? '' : 's'}`),
      h('td', {}, paramsText(w)),
      h('td', { class: 'time' }, fmtTime(w.created_at)));
  }

  async function load() {
    try {
      const workflows = await api('/api/workflows');
      $('workflows-body').replaceChildren(...workflows.map(row));
      $('empty').hidden = workflows.length > 0;
      $('count').textContent = `${workflows.length} workflow${workflows.length === 1 ? '' : 's'}`;
      showAlert($('error'), null);
    } catch (err) {
      showAlert($('error'), `Could not load the workflows: ${err.message}`);
    }
  }

  load();
})();
