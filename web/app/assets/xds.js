// xDS clients: every node connected to this replica, its versions per
// resource type, and NACKs with their message.

import { get } from './api.js';
import { ago } from './logic.js';
import { badge, errorBox, fill, h, keepFocus } from './ui.js';

const REFRESH_MS = 3000;

const STATUS = {
  acked: { level: 'ok', icon: '✓', label: 'ACKed' },
  sent: { level: 'warn', icon: '…', label: 'sent, no answer yet' },
  nacked: { level: 'bad', icon: '✕', label: 'NACKed' },
  not_sent: { level: 'unknown', icon: '–', label: 'nothing sent' },
};

export function mount(main) {
  const body = h('div');
  main.append(h('h1', {}, 'xDS clients'), h('p', { class: 'hint' }, 'Connected to this replica. Versions are content hashes: the same on every replica for the same configuration.'), body);
  let timer = null;
  let stopped = false;
  async function refresh() {
    try {
      const r = await get('/api/v1/xds/clients');
      keepFocus(main, () => fill(body, render(r.items)));
    } catch (e) {
      fill(body, errorBox(e));
    }
    if (!stopped) timer = setTimeout(refresh, REFRESH_MS);
  }
  refresh();
  return {
    unmount() {
      stopped = true;
      clearTimeout(timer);
    },
  };
}

function render(clients) {
  if (clients.length === 0) return h('p', { class: 'muted' }, 'No xDS client is connected to this replica.');
  const nacking = clients.filter((c) => c.resources.some((r) => r.status === 'nacked')).length;
  return h(
    'div',
    {},
    h('p', {}, `${clients.length} connected · `, nacking ? badge({ level: 'bad', icon: '✕', label: `${nacking} NACKing` }) : badge({ level: 'ok', icon: '✓', label: 'no NACK' })),
    h(
      'table',
      { class: 'grid', 'data-testid': 'xds-clients' },
      h('thead', {}, h('tr', {}, ['Node', 'Client', 'Type', 'Subscription', 'Sent', 'ACKed', 'State', 'Last NACK'].map((t) => h('th', {}, t)))),
      h(
        'tbody',
        {},
        clients.flatMap((c) => {
          const types = c.resources.length ? c.resources : [null];
          return types.map((r, i) =>
            h(
              'tr',
              { 'data-node': c.nodeId, class: r?.status === 'nacked' ? 'row-bad' : '' },
              i === 0 ? h('td', { rowspan: types.length }, h('span', { class: 'mono' }, c.nodeId), c.nodeCluster ? h('div', { class: 'muted small' }, c.nodeCluster) : null) : null,
              i === 0 ? h('td', { rowspan: types.length, class: 'small' }, `${c.userAgentName} ${c.userAgentVersion}`, h('div', { class: 'muted' }, `${c.xdsVariant} · since ${ago(c.connectedSinceMs)}`)) : null,
              r ? h('td', {}, r.type.toUpperCase()) : h('td', { colspan: 6, class: 'muted' }, 'no subscription yet'),
              r ? h('td', { class: 'small' }, r.wildcard ? 'wildcard' : `${r.subscribedNames} names`, ` · ${r.resourceCount} resources`) : null,
              r ? h('td', { class: 'mono small' }, r.lastSentVersion ?? '–') : null,
              r ? h('td', { class: 'mono small' }, r.lastAckedVersion ?? '–') : null,
              r ? h('td', {}, badge(STATUS[r.status] ?? { level: 'unknown', icon: '?', label: r.status })) : null,
              r ? h('td', { class: 'small' }, r.lastNack ? h('span', { class: 'error-text' }, `${r.lastNack.message} (version ${r.lastNack.version}, ${ago(r.lastNack.atMs)})`) : '') : null,
            ),
          );
        }),
      ),
    ),
  );
}
