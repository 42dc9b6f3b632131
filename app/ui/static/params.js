// A workflow's declared parameters and the "start run" form built from them.
// The typed list is the API's `parameters` ({name, type, default, required, description, enum}); an API without
// it falls back to what the workflow views always had: a DAG's `definition.params` defaults (type inferred from
// the default), a code workflow's `params` names (any type).
'use strict';

const TFParams = (() => {
  const { h } = TF;
  const JSON_TYPES = new Set(['array', 'object', 'any']);

  function jsonType(value) {
    if (typeof value === 'boolean') return 'boolean';
    if (typeof value === 'number') return Number.isInteger(value) ? 'integer' : 'number';
    if (typeof value === 'string') return 'string';
    if (Array.isArray(value)) return 'array';
    if (value && typeof value === 'object') return 'object';
    return 'any';
  }

  function declared(w) {
    if (Array.isArray(w.parameters)) return w.parameters;
    if (w.kind === 'code') {
      return (w.params || []).map((name) => ({ name, type: 'any', default: null, required: false, description: '' }));
    }
    const params = (w.definition && w.definition.params) || {};
    return Object.entries(params).map(([name, value]) => (
      { name, type: jsonType(value), default: value ?? null, required: false, description: '' }));
  }

  const fieldId = (p) => `param-${p.name}`;

  function input(p) {
    const attrs = { id: fieldId(p), name: p.name, 'data-param': p.name, 'data-type': p.type };
    const given = p.default !== null && p.default !== undefined;
    if (Array.isArray(p.enum) && p.enum.length) {
      const options = p.enum.map((v) => h('option', { value: JSON.stringify(v) }, typeof v === 'string' ? v : JSON.stringify(v)));
      if (!p.required) options.unshift(h('option', { value: '' }, given ? '(default)' : '(none)'));
      const select = h('select', { ...attrs, 'data-enum': 'true' }, options);
      select.value = given ? JSON.stringify(p.default) : (p.required ? JSON.stringify(p.enum[0]) : '');
      return select;
    }
    if (p.type === 'boolean') return h('input', { ...attrs, type: 'checkbox', checked: p.default === true });
    if (p.type === 'integer' || p.type === 'number') {
      return h('input', { ...attrs, type: 'number', step: p.type === 'integer' ? '1' : 'any', value: given ? p.default : null,
        required: p.required });
    }
    if (JSON_TYPES.has(p.type)) {
      return h('textarea', { ...attrs, rows: 2, spellcheck: 'false', class: 'json-input',
        placeholder: p.type === 'any' ? 'JSON, e.g. "text", 3 or [1, 2]' : `JSON ${p.type}` },
      given ? JSON.stringify(p.default) : '');
    }
    return h('input', { ...attrs, type: 'text', value: given ? p.default : null, required: p.required });
  }

  // one labelled field per parameter
  function fields(parameters) {
    return parameters.map((p) => h('div', { class: 'field', 'data-field': p.name },
      h('label', { for: fieldId(p) }, h('span', { class: 'param-name' }, p.name),
        h('span', { class: 'param-type' }, p.type), p.required ? h('span', { class: 'param-required' }, 'required') : null),
      input(p),
      p.description ? h('div', { class: 'muted field-help' }, p.description) : null));
  }

  // the params object the form describes; throws Error(one line) for a value that is not valid JSON.
  // An empty field is left out (the workflow's default applies; a required one is reported by the API).
  function read(form, parameters) {
    const params = {};
    for (const p of parameters) {
      const el = form.querySelector(`[data-param="${CSS.escape(p.name)}"]`);
      if (!el) continue;
      if (el.dataset.enum) {
        if (el.value !== '') params[p.name] = JSON.parse(el.value);
      } else if (p.type === 'boolean') {
        params[p.name] = el.checked;
      } else if (p.type === 'integer' || p.type === 'number') {
        if (el.value.trim() !== '') params[p.name] = Number(el.value);
        else if (el.validity && el.validity.badInput) throw new Error(`parameter ${p.name}: not a number`);
      } else if (JSON_TYPES.has(p.type)) {
        if (el.value.trim() === '') continue;
        try {
          params[p.name] = JSON.parse(el.value);
        } catch (err) {
          throw new Error(`parameter ${p.name}: not valid JSON (${err.message})`);
        }
      } else if (el.value !== '' || p.required || (p.default !== null && p.default !== undefined)) {
        params[p.name] = el.value;
      }
    }
    return params;
  }

  return { declared, fields, read, jsonType };
})();
