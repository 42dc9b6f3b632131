// Shared helpers of the Tideflow pages: API calls, safe DOM building, formatting, polling loops.
// Every string from the API is user data: it only ever reaches the page as text (textContent / text nodes).
'use strict';

const TF = (() => {
  const TERMINAL = new Set(['succeeded', 'failed', 'cancelled']);
  let clockOffset = 0; // server clock minus browser clock, in ms (only when they differ noticeably)

  class ApiError extends Error {
    constructor(status, message, body) {
      super(message);
      this.status = status;
      this.body = body;
    }
  }

  function loginUrl() {
    return '/login?next=' + encodeURIComponent(location.pathname + location.search);
  }

  // fetch a JSON API endpoint with the session cookie; POSTs carry the CSRF header; 401 -> login page
  async function api(path, { method = 'GET', body } = {}) {
    const headers = { Accept: 'application/json' };
    if (method !== 'GET') headers['X-Tideflow-CSRF'] = '1';
    const init = { method, headers, credentials: 'same-origin', cache: 'no-store' };
    if (body !== undefined) {
      headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    let resp;
    try {
      resp = await fetch(path, init);
    } catch (err) {
      throw new ApiError(0, 'The server cannot be reached: ' + err.message);
    }
    const date = Date.parse(resp.headers.get('Date') || '');
    if (!Number.isNaN(date)) {
      const offset = date - Date.now();
      clockOffset = Math.abs(offset) > 2000 ? offset : 0;
    }
    if (resp.status === 401) {
      location.assign(loginUrl());
      throw new ApiError(401, 'Your session has ended: sign in again.');
    }
    let data = null;
    try {
      data = await resp.json();
    } catch (err) {
      data = null;
    }
    if (!resp.ok) {
      const message = data && typeof data.message === 'string' ? data.message : `HTTP ${resp.status}`;
      throw new ApiError(resp.status, message, data);
    }
    return data;
  }

  function append(node, children) {
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function setAttrs(node, attrs) {
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === 'class') node.setAttribute('class', value);
      else if (key.startsWith('on')) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? '' : String(value));
    }
    return node;
  }

  // h('a', {href: '/x', class: 'y'}, 'text', child...) - strings become text nodes, never markup
  function h(tag, attrs, ...children) {
    return append(setAttrs(document.createElement(tag), attrs), children);
  }

  function svg(tag, attrs, ...children) {
    return append(setAttrs(document.createElementNS('http://www.w3.org/2000/svg', tag), attrs), children);
  }

  function badge(state) {
    return h('span', { class: `badge state-${state}`, 'data-state': state }, String(state).replace('_', ' '));
  }

  const pad = (n) => String(n).padStart(2, '0');

  // local time, "2026-01-31 14:05:09" (with milliseconds when asked)
  function fmtTime(iso, withMs = false) {
    if (!iso) return '—';
    const d = new Date(iso);
    if (Number.isNaN(d.getTime())) return String(iso);
    const ms = withMs ? `.${String(d.getMilliseconds()).padStart(3, '0')}` : '';
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
      `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}${ms}`;
  }

  function fmtDuration(seconds) {
    if (seconds === null || seconds === undefined || Number.isNaN(seconds)) return '—';
    const s = Math.max(0, seconds);
    if (s < 1) return `${Math.round(s * 1000)} ms`;
    if (s < 60) return `${s.toFixed(s < 10 ? 1 : 0)} s`;
    if (s < 3600) return `${Math.floor(s / 60)} m ${pad(Math.floor(s % 60))} s`;
    return `${Math.floor(s / 3600)} h ${pad(Math.floor((s % 3600) / 60))} m`;
  }

  const now = () => Date.now() + clockOffset;

  // seconds from an ISO time to another one, or to now
  function elapsed(fromIso, toIso) {
    if (!fromIso) return null;
    const end = toIso ? Date.parse(toIso) : now();
    return (end - Date.parse(fromIso)) / 1000;
  }

  // run fn() now and then every `interval` ms after it finishes, until stop() or until fn returns false
  function loop(fn, interval) {
    let timer = null;
    let busy = false;
    let again = false;
    let active = false;
    async function run() {
      timer = null;
      if (busy) { again = true; return; }
      busy = true;
      let more = true;
      try {
        more = (await fn()) !== false;
      } catch (err) {
        console.error(err);
      } finally {
        busy = false;
      }
      if (!more) active = false;
      if (!active) return;
      if (again) { again = false; run(); } else { timer = setTimeout(run, interval); }
    }
    return {
      start() { active = true; if (!timer && !busy) run(); },
      stop() { active = false; again = false; clearTimeout(timer); timer = null; },
      kick() { clearTimeout(timer); timer = null; active = true; run(); },
      get active() { return active; },
    };
  }

  function showAlert(node, message, kind = 'error') {
    node.hidden = !message;
    node.className = `alert alert-${kind}`;
    node.textContent = message || '';
  }

  // Ask before a destructive action: a modal <dialog id="confirm-dialog"> (not window.confirm: styled, and the
  // page keeps polling behind it). Resolves true when confirmed; Cancel, Escape or a click outside: false.
  function confirmAction(title, message, confirmLabel, { danger = true } = {}) {
    return new Promise((resolve) => {
      const dialog = h('dialog', { class: 'confirm', id: 'confirm-dialog', 'aria-labelledby': 'confirm-title' });
      const done = (ok) => { if (dialog.open) dialog.close(); dialog.remove(); resolve(ok); };
      const yes = h('button', { type: 'button', class: `btn ${danger ? 'btn-danger-solid' : 'btn-primary'}`,
        id: 'confirm-yes', onclick: () => done(true) }, confirmLabel);
      append(dialog, [
        h('h2', { id: 'confirm-title' }, title),
        h('p', { id: 'confirm-message' }, message),
        h('div', { class: 'confirm-buttons' },
          h('button', { type: 'button', class: 'btn', id: 'confirm-no', onclick: () => done(false) }, 'Cancel'), yes),
      ]);
      dialog.addEventListener('cancel', (e) => { e.preventDefault(); done(false); });
      dialog.addEventListener('click', (e) => { if (e.target === dialog) done(false); });
      document.body.append(dialog);
      dialog.showModal();
      yes.focus();
    });
  }

  return { TERMINAL, ApiError, api, h, svg, badge, fmtTime, fmtDuration, elapsed, now, loop, showAlert,
    confirmAction };
})();
