// Events: a live timeline of failovers, recoveries, weight changes, DNS
// changes, overrides, drains and anything else the server records (GitOps
// syncs included): kinds this page does not know are shown as they come,
// with their details.

import { get } from './api.js';
import { onEvent } from './main.js';
import { eventLevel } from './logic.js';
import { errorBox, fill, h } from './ui.js';

const KEEP = 1000;

export function mount(main) {
  const filter = h('input', { type: 'search', id: 'ev-filter', placeholder: 'policy, kind or text', autocomplete: 'off' });
  const list = h('ol', { class: 'timeline', 'data-testid': 'timeline', 'aria-live': 'polite', 'aria-relevant': 'additions' });
  const problem = h('div');
  const count = h('p', { class: 'muted' });
  main.append(
    h('h1', {}, 'Events'),
    h('div', { class: 'toolbar' }, h('label', { for: 'ev-filter' }, 'Filter'), filter),
    count,
    problem,
    list,
  );
  const seen = new Set();
  let items = [];

  function visible(e) {
    const q = filter.value.trim().toLowerCase();
    return !q || `${e.policyName ?? ''} ${e.kind} ${e.message}`.toLowerCase().includes(q);
  }
  function add(e, atTop) {
    if (seen.has(e.id)) return;
    seen.add(e.id);
    const li = item(e);
    li.hidden = !visible(e);
    if (atTop) {
      list.prepend(li);
      items.unshift({ e, li });
    } else {
      list.append(li);
      items.push({ e, li });
    }
    while (items.length > KEEP) items.pop().li.remove();
    count.textContent = `${items.length} events (newest first; live).`;
  }
  filter.addEventListener('input', () => {
    for (const { e, li } of items) li.hidden = !visible(e);
  });

  const off = onEvent((e) => add(e, true));
  get(`/api/v1/dashboard/events?limit=${KEEP}`)
    .then((r) => {
      // Newest first from the API. Events that arrived live meanwhile are
      // already shown and are skipped.
      for (const e of r.items) add(e, false);
      items.sort((a, b) => b.e.id - a.e.id);
      list.append(...items.map((x) => x.li));
    })
    .catch((e) => fill(problem, errorBox(e)));
  return { unmount: off };
}

function item(e) {
  const level = eventLevel(e);
  const icon = { ok: '✓', warn: '▲', bad: '✕', info: '•' }[level];
  const details = e.details && Object.keys(e.details).length ? JSON.stringify(e.details) : null;
  return h(
    'li',
    { class: `ev ${level}`, 'data-kind': e.kind, 'data-id': e.id },
    h('time', { datetime: e.at, title: e.at }, new Date(e.at).toLocaleTimeString()),
    h('span', { class: `badge ${level}` }, h('span', { 'aria-hidden': 'true' }, icon), ` ${e.severity}`),
    h('span', { class: 'kind' }, e.kind),
    e.policyName ? h('a', { href: `/policies/${encodeURIComponent(e.policyName)}`, 'data-nav': true }, e.policyName) : h('span', { class: 'muted' }, '—'),
    h('span', { class: 'msg' }, e.message),
    details ? h('details', {}, h('summary', {}, 'details'), h('pre', { class: 'small' }, JSON.stringify(e.details, null, 2))) : null,
  );
}
