// Overview: every policy's state at a glance, from one request
// (`/api/v1/dashboard/overview`), refreshed on every live event and every
// few seconds. Rows are keyed by name and rebuilt only when their summary
// changes, and the search only toggles `hidden`, so 1,000 policies stay
// responsive.

import { get } from './api.js';
import { onEvent } from './main.js';
import { attention, flagOf, healthOf, matches } from './logic.js';
import { badge, errorBox, fill, h } from './ui.js';

const REFRESH_MS = 5000;
const ZONE_COLOURS = 6;

export function mount(main) {
  const params = new URLSearchParams(location.search);
  const search = h('input', {
    type: 'search',
    id: 'search',
    placeholder: 'name, host, team=logistics, is:degraded …',
    'aria-describedby': 'search-help',
    value: params.get('q') ?? '',
    autocomplete: 'off',
  });
  const onlyAttention = h('input', { type: 'checkbox', id: 'only-attention' });
  const counts = h('p', { class: 'counts', 'aria-live': 'polite' });
  const xdsLine = h('p', { class: 'muted' });
  const problem = h('div');
  const tbody = h('tbody');
  const empty = h('p', { class: 'muted', hidden: true }, 'No policy matches.');
  main.append(
    h('h1', {}, 'Policies'),
    h(
      'div',
      { class: 'toolbar' },
      h('label', { for: 'search' }, 'Search'),
      search,
      h('label', { class: 'check' }, onlyAttention, ' needs attention only'),
    ),
    h('p', { id: 'search-help', class: 'hint' }, 'Words must all match: part of a name, host or label; key=value for a label; is:down, is:degraded, is:failed-over, is:override, is:dns-out-of-sync, is:xds-nack.'),
    counts,
    xdsLine,
    problem,
    h(
      'table',
      { class: 'grid overview', 'data-testid': 'overview' },
      h(
        'thead',
        {},
        h('tr', {}, h('th', {}, 'State'), h('th', {}, 'Policy'), h('th', {}, 'Host'), h('th', {}, 'Labels'), h('th', {}, 'Traffic (effective)'), h('th', {}, 'Attention'), h('th', {}, 'DNS')),
      ),
      tbody,
    ),
    empty,
  );

  const rows = new Map(); // name -> {key, tr, summary}
  let order = '';

  function applyFilter() {
    const q = search.value;
    let shown = 0;
    for (const { tr, summary } of rows.values()) {
      const visible = matches(summary, q) && (!onlyAttention.checked || attention(summary) < 3);
      tr.hidden = !visible;
      if (visible) shown++;
    }
    empty.hidden = shown > 0 || rows.size === 0;
    const url = new URL(location.href);
    if (q) url.searchParams.set('q', q);
    else url.searchParams.delete('q');
    history.replaceState(null, '', url);
    return shown;
  }

  function update(data) {
    fill(problem);
    const seen = new Set();
    for (const s of data.items) {
      seen.add(s.name);
      const key = JSON.stringify(s);
      const old = rows.get(s.name);
      if (old && old.key === key) continue;
      const tr = row(s);
      if (old) old.tr.replaceWith(tr);
      rows.set(s.name, { key, tr, summary: s });
    }
    for (const [name, r] of rows) {
      if (!seen.has(name)) {
        r.tr.remove();
        rows.delete(name);
      }
    }
    const sorted = [...rows.values()].sort((a, b) => attention(a.summary) - attention(b.summary) || a.summary.name.localeCompare(b.summary.name));
    const newOrder = sorted.map((r) => r.summary.name).join('\n');
    if (newOrder !== order || tbody.childElementCount !== rows.size) {
      tbody.append(...sorted.map((r) => r.tr));
      order = newOrder;
    }
    const shown = applyFilter();
    const tally = (pred) => data.items.filter(pred).length;
    fill(counts, 
      `${data.items.length} policies`,
      shown !== data.items.length ? ` (${shown} shown)` : '',
      ' · ',
      countChip('down', tally((s) => s.health === 'down')),
      countChip('degraded', tally((s) => s.health === 'degraded')),
      countChip('healthy', tally((s) => s.health === 'healthy')),
      countChip('unknown', tally((s) => s.health === 'unknown')),
    );
    // The tab says what needs a look, so it shows from another tab too.
    const needy = data.items.filter((s) => attention(s) < 3).length;
    document.title = `${needy ? `(${needy} need a look) ` : ''}Policies — Meridian`;
    xdsLine.textContent = data.xds
      ? `xDS on this replica: ${data.xds.clients} client${data.xds.clients === 1 ? '' : 's'} connected, ${data.xds.nacking} holding a NACK, ${data.xds.pending} not yet answering the latest version.`
      : 'This replica does not run the xDS role.';
  }

  let timer = null;
  let pending = null;
  let stopped = false;
  async function refresh() {
    clearTimeout(timer);
    try {
      update(await get('/api/v1/dashboard/overview'));
    } catch (e) {
      fill(problem, errorBox(e));
    }
    if (!stopped) timer = setTimeout(refresh, REFRESH_MS);
  }
  const off = onEvent(() => {
    // A burst of events (a failover writes several) costs one refresh.
    if (pending) return;
    pending = setTimeout(() => {
      pending = null;
      refresh();
    }, 250);
  });
  search.addEventListener('input', applyFilter);
  onlyAttention.addEventListener('change', applyFilter);
  refresh();
  search.focus();
  return {
    unmount() {
      stopped = true;
      clearTimeout(timer);
      clearTimeout(pending);
      off();
    },
  };
}

function countChip(health, n) {
  const s = healthOf(health);
  return h('span', { class: `count ${s.level}` }, h('span', { 'aria-hidden': 'true' }, s.icon), ` ${n} ${s.label} `);
}

function row(s) {
  const href = `/policies/${encodeURIComponent(s.name)}`;
  return h(
    'tr',
    { 'data-policy': s.name, 'data-health': s.health, class: `row-${healthOf(s.health).level}` },
    h('td', {}, badge(healthOf(s.health))),
    h('td', {}, h('a', { href, 'data-nav': true }, s.name)),
    h('td', { class: 'mono' }, `${s.host}:${s.port}`),
    h('td', {}, Object.entries(s.labels).map(([k, v]) => h('span', { class: 'label' }, `${k}=${v}`))),
    h('td', {}, trafficBar(s)),
    h(
      'td',
      {},
      s.flags.map((f) => badge(flagOf(f), { attrs: { 'data-flag': f } })),
      s.override ? h('span', { class: 'muted small', title: s.override }, ` “${s.override}”`) : null,
    ),
    h('td', {}, dnsBadge(s.dns)),
  );
}

export function dnsBadge(state) {
  const map = {
    synced: { level: 'ok', icon: '✓', label: 'synced' },
    pending: { level: 'warn', icon: '⟳', label: 'pending' },
    error: { level: 'bad', icon: '✕', label: 'error' },
    unknown: { level: 'unknown', icon: '?', label: 'not yet' },
    none: { level: 'none', icon: '–', label: 'no DNS' },
  };
  return badge(map[state] ?? { level: 'unknown', icon: '?', label: state });
}

/** A compact bar of effective weights; the text says the shift too. */
function trafficBar(s) {
  const moved = s.zones.some((z) => z.effectiveWeight !== z.specWeight);
  const total = s.zones.reduce((a, z) => a + z.effectiveWeight, 0) || 1;
  const text = s.zones.map((z) => z.effectiveWeight).join('/');
  const spec = s.zones.map((z) => z.specWeight).join('/');
  return h(
    'div',
    { class: 'mini', title: s.zones.map((z) => `${z.name}: spec ${z.specWeight}, effective ${z.effectiveWeight}`).join('\n') },
    h(
      'div',
      { class: 'minibar', 'aria-hidden': 'true' },
      s.zones.map((z, i) => h('span', { class: `seg z${i % ZONE_COLOURS}`, style: { width: `${(z.effectiveWeight * 100) / total}%` } })),
    ),
    h('span', { class: `small ${moved ? 'shift' : 'muted'}` }, moved ? `${spec} → ${text}` : text),
  );
}
