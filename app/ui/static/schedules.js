// The schedules list: cron and its meaning, the next fire times, the last fire times with their runs (or why they
// were skipped), and pause / resume / trigger, each confirmed first (admin: the API answers 403 otherwise).
'use strict';

(() => {
  const { api, h, badge, fmtTime, showAlert, confirmAction, loop } = TF;
  const $ = (id) => document.getElementById(id);

  function lastRuns(s) {
    if (!s.last.length) return h('span', { class: 'muted' }, 'none yet');
    return h('ul', { class: 'plain fires' }, ...s.last.map((f) => h('li', { 'data-fire': f.fire_time,
      'data-outcome': f.outcome, title: f.reason },
    h('span', { class: 'time' }, fmtTime(f.fire_time)), ' ',
    f.run_id ? h('a', { href: `/runs/${f.run_id}`, class: 'fire-run' }, `#${f.run_id} `,
      badge(f.run_state || f.outcome))
      : h('span', { class: 'muted fire-why' }, `${f.outcome}: ${f.reason}`))));
  }

  const ACTIONS = {
    pause: ['Pause', (s) => [`Pause schedule ${s.name}?`, 'No fire time runs until it is resumed; runs already '
      + 'started go on.', 'Pause', true]],
    resume: ['Resume', (s) => [`Resume schedule ${s.name}?`, 'It fires again from now; the fire times of the '
      + 'pause are not caught up (backfill them if needed).', 'Resume', false]],
    trigger: ['Trigger now', (s) => [`Trigger schedule ${s.name}?`, `Starts a run of ${s.workflow} now, with `
      + 'the schedule\'s parameters.', 'Start run', false]],
  };

  function button(s, action) {
    const [label, ask] = ACTIONS[action];
    return h('button', { type: 'button', class: 'btn btn-small', 'data-action': action, onclick: async () => {
      const [title, message, yes, danger] = ask(s);
      if (!(await confirmAction(title, message, yes, { danger }))) return;
      try {
        const res = await api(`/api/schedules/${encodeURIComponent(s.name)}/${action}`, { method: 'POST' });
        showAlert($('notice'), action === 'trigger' ? `Started run #${res.run_id}.` : `Schedule ${s.name}: `
          + `${action === 'pause' ? 'paused' : 'resumed'}.`, 'ok');
        showAlert($('error'), null);
        poller.kick();
      } catch (err) {
        showAlert($('error'), `Could not ${action} ${s.name}: ${err.message}`);
      }
    } }, label);
  }

  function row(s) {
    return h('tr', { 'data-schedule': s.name, 'data-paused': String(s.paused) },
      h('td', {}, h('strong', {}, s.name)),
      h('td', {}, h('a', { href: `/workflows/${encodeURIComponent(s.workflow)}` }, s.workflow)),
      h('td', {}, h('code', {}, s.cron), s.timezone === 'UTC' ? '' : ` (${s.timezone})`,
        h('div', { class: 'muted cron-text' }, s.description)),
      h('td', { class: 'next' }, s.next.length ? h('ul', { class: 'plain' },
        ...s.next.map((t) => h('li', { class: 'time' }, fmtTime(t)))) : h('span', { class: 'muted' }, '—')),
      h('td', {}, lastRuns(s)),
      h('td', {}, h('span', { class: 'schedule-state' }, s.paused ? 'paused' : 'active'),
        s.paused ? h('div', { class: 'muted paused-by' }, `by ${s.paused_by} at ${fmtTime(s.paused_at)}`) : null),
      h('td', { class: 'actions' }, button(s, s.paused ? 'resume' : 'pause'), ' ', button(s, 'trigger')));
  }

  async function load() {
    try {
      const schedules = await api('/api/schedules');
      if (document.querySelector('dialog[open]')) return true;  // do not redraw under an open confirmation
      $('schedules-body').replaceChildren(...schedules.map(row));
      $('empty').hidden = schedules.length > 0;
      $('count').textContent = `${schedules.length} schedule${schedules.length === 1 ? '' : 's'}`;
      showAlert($('error'), null);
    } catch (err) {
      showAlert($('error'), `Could not load the schedules: ${err.message}`);
    }
    return true;
  }

  const poller = loop(load, 5000);
  poller.start();
})();
