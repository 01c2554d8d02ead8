// Policy page: where its traffic goes now and why, zone by zone, and the
// actions an SRE takes during an incident, each confirmed with a preview
// of what changes.

import { enc, get, send } from './api.js';
import { onEvent } from './main.js';
import { ago, diffHunks, drainPreview, evidenceLines, eventLevel, flagOf, healthOf, healthSpans, lineDiff, rateText, rolloutAction, rolloutChart, rolloutPhaseOf, rolloutSteps, sparkPath, stableText, weightChanges, zoneHealthOf, zoneTransitions, ROLLOUT_ACTIONS } from './logic.js';
import { dnsBadge } from './overview.js';
import { badge, confirmAction, errorBox, fill, h, keepFocus, svg, toast } from './ui.js';

const STATUS_MS = 2000;
const SLOW_MS = 10000;
/** How far back a rollout's failure-rate chart goes (the server keeps 15). */
const ROLLOUT_MINUTES = 10;
/** The failure-rate cell: both sources, the deciding one marked, the
 *  bounds the decision used, and the verdict as its tooltip. */
function evidenceCell(z) {
  const { lines, bounds } = evidenceLines(z);
  return h(
    'td',
    { class: 'num', 'data-testid': 'evidence', title: z.verdict ?? '' },
    lines.map((l) => h('div', { class: l.deciding ? 'deciding' : 'muted small', 'data-source': l.source, 'data-deciding': String(l.deciding) }, l.text, l.deciding ? ' ◂ decides' : '')),
    bounds ? h('div', { class: 'muted small' }, `bounds ${bounds}`) : null,
  );
}

/** Failure-rate samples kept per zone: five minutes at one per 2 s. */
const HISTORY = 150;
const WINDOW_MS = 5 * 60_000;
/** Events kept for the timeline and the zones' health history. */
const EVENTS = 200;
const ZONE_COLOURS = 6;

/** Failure-rate history per policy and zone, kept while the app is open
 *  so that leaving and coming back keeps the sparkline. */
const history = new Map();

function remember(policy, zones) {
  const now = Date.now();
  for (const z of zones) {
    const key = `${policy}\u0000${z.name}`;
    const list = history.get(key) ?? [];
    list.push({ at: now, rate: z.failureRatePercent, health: z.health });
    while (list.length > HISTORY) list.shift();
    history.set(key, list);
  }
}

export function mount(main, name) {
  const path = `/api/v1/policies/${enc(name)}`;
  const state = { policy: null, status: null, revisions: [], clients: null, events: [], rollouts: {}, rolloutTraffic: {}, rolloutErrors: {}, rolloutBusy: new Set() };
  const problem = h('div');
  const head = h('section', { class: 'policy-head' });
  const traffic = h('section', { 'aria-labelledby': 'traffic-h' });
  const rollouts = h('section', { 'aria-labelledby': 'rollout-h', 'data-testid': 'rollouts', hidden: true });
  const zones = h('section', { 'aria-labelledby': 'zones-h' });
  const canaries = h('section', { 'aria-labelledby': 'canary-h' });
  const dns = h('section', { 'aria-labelledby': 'dns-h' });
  const xds = h('section', { 'aria-labelledby': 'xds-h' });
  const revisions = h('section', { 'aria-labelledby': 'rev-h' });
  const events = h('section', { 'aria-labelledby': 'ev-h' });
  main.append(
    h('p', { class: 'crumbs' }, h('a', { href: '/', 'data-nav': true }, '← All policies')),
    problem,
    head,
    traffic,
    rollouts,
    zones,
    h('div', { class: 'cols' }, h('div', {}, canaries, events), h('div', {}, dns, xds)),
    revisions,
  );

  let stopped = false;
  // One pending timer per loop; a loop waits for its request before
  // scheduling the next, so a slow server is never asked twice at once.
  const timers = new Map();
  const every = (ms, fn) => {
    const tick = async () => {
      if (stopped) return;
      await fn();
      if (!stopped) timers.set(fn, setTimeout(tick, ms));
    };
    tick();
  };

  async function loadStatus() {
    try {
      const [policy, status, rollouts] = await Promise.all([get(path), get(`${path}/status`), get(`${path}/rollouts`)]);
      state.policy = policy;
      state.status = status;
      const fresh = Object.keys(rollouts).some((r) => !(r in state.rollouts));
      state.rollouts = rollouts;
      // A rollout seen for the first time gets its chart at once.
      if (fresh) loadRolloutTraffic();
      remember(name, status.zones);
      fill(problem);
      renderLive();
    } catch (e) {
      fill(problem, errorBox(e));
    }
  }
  async function loadSlow() {
    try {
      const [revs, clients] = await Promise.all([
        get(`${path}/revisions`),
        get('/api/v1/xds/clients').catch((e) => ({ error: e })),
      ]);
      state.revisions = revs.items;
      state.clients = clients;
      renderXds();
      renderRevisions();
    } catch (e) {
      fill(problem, errorBox(e));
    }
  }
  /** The failure-rate series of each rollout, for its chart. */
  async function loadRolloutTraffic() {
    const routes = Object.keys(state.rollouts);
    await Promise.all(
      routes.map(async (route) => {
        try {
          state.rolloutTraffic[route] = await get(`${path}/rollouts/${enc(route)}/traffic?minutes=${ROLLOUT_MINUTES}`);
        } catch (e) {
          state.rolloutTraffic[route] = { error: e };
        }
      }),
    );
    if (routes.length && state.status) keepFocus(main, drawRollouts);
  }
  async function loadEvents() {
    try {
      const r = await get(`/api/v1/dashboard/events?policy=${enc(name)}&limit=${EVENTS}`);
      const live = state.events.filter((e) => !r.items.some((x) => x.id === e.id));
      state.events = [...live, ...r.items].sort((a, b) => b.id - a.id).slice(0, EVENTS);
      renderEvents();
    } catch (e) {
      fill(events, h('h2', { id: 'ev-h' }, 'Recent events'), errorBox(e));
    }
  }

  const refreshSoon = (() => {
    let t = null;
    return () => {
      if (t) return;
      t = setTimeout(() => {
        t = null;
        if (!stopped) {
          loadStatus();
          loadSlow();
        }
      }, 200);
    };
  })();
  const off = onEvent((e) => {
    if (e.policyName !== name) return;
    state.events.unshift(e);
    state.events.length = Math.min(state.events.length, EVENTS);
    renderEvents();
    refreshSoon();
  });

  function afterAction() {
    loadStatus();
    loadSlow();
  }

  function renderLive() {
    // Redrawn every two seconds: keep the keyboard where it was.
    keepFocus(main, drawLive);
  }

  function drawLive() {
    const { policy, status } = state;
    const summaryHealth = overallHealth(status.zones);
    const ov = status.override;
    const flags = [];
    if (status.cause === 'failover') flags.push('failed-over');
    if (status.cause === 'all-unhealthy-fail-open') flags.push('fail-open');
    if (ov) flags.push('override');
    if (status.zones.some((z) => z.drained)) flags.push('drained');
    fill(head, 
      h('h1', {}, name, ' ', badge(healthOf(summaryHealth), { attrs: { 'data-testid': 'policy-health' } })),
      h(
        'p',
        { class: 'meta' },
        h('span', { class: 'mono' }, `${policy.spec.host}:${policy.spec.port}`),
        ` · ${policy.spec.protocol ?? 'http'} · failover ${policy.spec.failover?.mode ?? ''} · resourceVersion ${policy.metadata.resourceVersion} · `,
        Object.entries(policy.metadata.labels ?? {}).map(([k, v]) => h('span', { class: 'label' }, `${k}=${v}`)),
      ),
      h(
        'p',
        {},
        flags.map((f) => badge(flagOf(f))),
        ' Weights decided by ',
        h('strong', { 'data-testid': 'cause' }, status.cause),
        status.decidedAt ? ` ${ago(status.decidedAt)}` : ' (no decision yet: spec weights)',
        status.predictedFailover ? h('span', { class: 'muted' }, ` · predicted failover ${formatPredicted(status.predictedFailover)}`) : null,
      ),
      ov
        ? h(
            'div',
            { class: 'override-box', 'data-testid': 'override' },
            h('strong', {}, '⚑ Override active: '),
            Object.entries(ov.weights).map(([z, w]) => `${z} ${w}%`).join(', '),
            ` — “${ov.reason}” by ${ov.actor}`,
            ov.expiresAt ? `, expires ${new Date(ov.expiresAt).toLocaleString()}` : ', no expiry',
            ' ',
            h('button', { type: 'button', class: 'btn', 'data-key': 'clear-override', onclick: clearOverride }, 'Clear override…'),
          )
        : null,
      status.xdsRejected
        ? h(
            'div',
            { class: 'override-box', 'data-testid': 'xds-rejected' },
            h('strong', {}, '⚠ Refused by an xDS client: '),
            `${status.xdsRejected.nodeId} refused ${status.xdsRejected.resource} with this policy in it ${ago(status.xdsRejected.at)} — “${status.xdsRejected.message}”. `,
            `It is left out of ${status.xdsRejected.resource} until it is changed, so the other policies there keep getting updates.`,
          )
        : null,
      h('div', { class: 'actions' }, h('button', { type: 'button', class: 'btn primary', 'data-key': 'set-override', onclick: setOverride }, ov ? 'Change override…' : 'Set weight override…')),
    );

    drawRollouts();

    fill(traffic, 
      h('h2', { id: 'traffic-h' }, 'Traffic'),
      weightBar('Spec', status.zones, 'specWeight', 'spec-bar'),
      weightBar('Effective', status.zones, 'effectiveWeight', 'effective-bar'),
      h('ul', { class: 'legend' }, status.zones.map((z, i) => h('li', {}, h('span', { class: `swatch z${i % ZONE_COLOURS}`, 'aria-hidden': 'true' }), `${z.name}: ${z.specWeight}% → ${z.effectiveWeight}%`, z.reason ? h('span', { class: 'muted' }, ` (${z.reason})`) : null))),
    );

    fill(zones, 
      h('h2', { id: 'zones-h' }, 'Zones'),
      h(
        'table',
        { class: 'grid', 'data-testid': 'zones' },
        h('thead', {}, h('tr', {}, ['Zone', 'Health', 'Failure rate', 'Recent (≤ 5 min)', 'Spec', 'Effective', 'Checkers', ''].map((t) => h('th', {}, t)))),
        h(
          'tbody',
          {},
          status.zones.map((z) =>
            h(
              'tr',
              { 'data-zone': z.name },
              h(
                'td',
                {},
                h('strong', {}, z.name),
                ' ',
                z.drained ? h('span', { class: 'badge info', 'data-testid': 'drained' }, '∥ drained') : null,
                (z.unhealthyEndpoints ?? []).length > 0
                  ? h('div', { class: 'muted small', 'data-testid': 'unhealthy-endpoints' }, `unhealthy endpoints (no traffic): ${z.unhealthyEndpoints.join(', ')}`)
                  : null,
              ),
              h('td', {}, badge(zoneHealthOf(z.health))),
              evidenceCell(z),
              h('td', {}, sparkline(history.get(`${name}\u0000${z.name}`) ?? [], zoneTransitions(state.events, z.name), z.health, policy.spec.failover?.failureRatePercent ?? 5)),
              h('td', { class: 'num' }, `${z.specWeight}%`),
              h('td', { class: `num ${z.effectiveWeight !== z.specWeight ? 'shift' : ''}` }, `${z.effectiveWeight}%`),
              h('td', { class: 'small' }, z.checkers.map((c) => h('div', { title: c.lastError ?? '' }, `${c.checker}: ${c.failures}/${c.samples} failed`, c.failures > 0 && c.lastError ? h('span', { class: 'muted' }, ` — ${c.lastError}`) : null))),
              h(
                'td',
                {},
                z.drained
                  ? h('button', { type: 'button', class: 'btn', 'data-key': `restore-${z.name}`, onclick: () => undrain(z) }, `Restore ${z.name}…`)
                  : h('button', { type: 'button', class: 'btn warn', 'data-key': `drain-${z.name}`, onclick: () => drain(z) }, `Drain ${z.name}…`),
              ),
            ),
          ),
        ),
      ),
    );

    const routes = policy.spec.routes ?? [];
    fill(canaries, 
      h('h2', { id: 'canary-h' }, 'Canary routes'),
      routes.length === 0
        ? h('p', { class: 'muted' }, 'No routes.')
        : h(
            'table',
            { class: 'grid' },
            h('thead', {}, h('tr', {}, ['Route', 'Match', 'Canary version', 'Weight', 'Timeout / retries', ''].map((t) => h('th', {}, t)))),
            h(
              'tbody',
              {},
              routes.map((r, i) =>
                h(
                  'tr',
                  { 'data-route': r.name },
                  h('td', {}, r.name),
                  h('td', { class: 'mono small' }, r.match?.pathPrefix ?? '/', (r.match?.headers ?? []).map((m) => ` ${m.name}=${m.exact}`).join('')),
                  h('td', {}, r.canary ? r.canary.version : h('span', { class: 'muted' }, 'none')),
                  h('td', { class: 'num' }, r.canary ? `${r.canary.weight}%` : '–'),
                  h(
                    'td',
                    { class: 'small' },
                    r.timeoutMs === undefined ? 'default' : r.timeoutMs === 0 ? 'no limit' : `${r.timeoutMs} ms`,
                    ' / ',
                    r.retries ? `${r.retries.attempts} on ${r.retries.retryOn.join(', ')}` : 'none',
                  ),
                  h(
                    'td',
                    {},
                    // Under a rollout the leader sets the weight (the spec's must stay 0).
                    r.canary?.rollout
                      ? h('span', { class: 'muted small' }, 'set by the rollout')
                      : r.canary
                        ? h('button', { type: 'button', class: 'btn', 'data-key': `canary-${r.name}`, onclick: () => changeCanary(i) }, 'Change weight…')
                        : null,
                  ),
                ),
              ),
            ),
          ),
    );

    const providers = status.dns?.providers ?? [];
    const zoneDns = policy.spec.zones.filter((z) => z.dns);
    fill(dns, 
      h('h2', { id: 'dns-h' }, 'DNS providers'),
      zoneDns.length === 0
        ? h('p', { class: 'muted' }, 'No zone publishes to DNS.')
        : h(
            'table',
            { class: 'grid', 'data-testid': 'dns' },
            h('thead', {}, h('tr', {}, ['Provider', 'Sync', 'Last change', 'Last error'].map((t) => h('th', {}, t)))),
            h(
              'tbody',
              {},
              [...new Set(zoneDns.map((z) => z.dns.provider))].map((p) => {
                const s = providers.find((x) => x.provider === p);
                return h(
                  'tr',
                  {},
                  h('td', {}, p),
                  h('td', {}, dnsBadge(s ? s.state : 'unknown')),
                  h('td', {}, s?.lastChangeAt ? ago(s.lastChangeAt) : 'never'),
                  h('td', { class: 'small' }, s?.lastError ?? ''),
                );
              }),
            ),
          ),
    );
  }

  /** One part per route with a rollout; the section is hidden without. */
  function drawRollouts() {
    const entries = Object.entries(state.rollouts ?? {});
    rollouts.hidden = entries.length === 0;
    if (entries.length === 0) {
      fill(rollouts);
      return;
    }
    fill(
      rollouts,
      h('h2', { id: 'rollout-h' }, entries.length === 1 ? 'Rollout' : 'Rollouts'),
      entries.map(([route, st]) => rolloutPart(route, st)),
    );
  }

  function rolloutPart(route, st) {
    const spec = state.policy?.spec.routes?.find((r) => r.name === route)?.canary?.rollout;
    const limit = spec?.analysis?.maxFailureRatePercent ?? null;
    const steps = rolloutSteps(st);
    const zoneOrder = st.zoneOrder ?? null;
    const unavailable = new Set(st.unavailableZones ?? []);
    const a = st.lastAnalysis;
    const busy = state.rolloutBusy.has(route);
    const labels = { pause: 'Pause', resume: 'Resume', promote: 'Promote…', abort: 'Abort…' };
    const hints = {
      pause: 'Hold the canary weights where they are',
      resume: 'Go on: the current step starts its interval again',
      promote: `Complete at once: ${st.version} takes 100% wherever it runs`,
      abort: 'Roll back: canary weight 0 in every zone',
    };
    // A refusal stays shown until the rollout moves on (or an action works).
    const refused = state.rolloutErrors[route];
    const err = refused && refused.phase === st.phase ? refused.error : null;
    return h(
      'div',
      { class: 'rollout', 'data-rollout': route },
      h(
        'h3',
        {},
        `Route ${route}: ${st.version} `,
        badge(rolloutPhaseOf(st.phase), { attrs: { 'data-testid': 'rollout-phase', 'data-phase': st.phase } }),
      ),
      st.reason ? h('p', { class: 'small', 'data-testid': 'rollout-reason' }, st.reason) : null,
      h(
        'div',
        { class: 'rollout-steps' },
        h('span', { class: 'muted small' }, zoneOrder ? `Steps in ${zoneOrder[st.zoneIndex] ?? '?'}: ` : 'Steps: '),
        h(
          'ol',
          { class: 'steps', 'data-testid': 'rollout-steps' },
          steps.map((s) => h('li', { class: s.state, 'aria-current': s.state === 'current' ? 'step' : null, 'data-state': s.state }, `${s.percent}%`)),
        ),
        h(
          'span',
          { class: 'muted small' },
          ` started ${ago(st.startedMs)}`,
          // A failed, completed or aborted rollout has no step running.
          ['progressing', 'paused'].includes(st.phase)
            ? `, this ${st.inconclusive ? `interval (${st.inconclusive} inconclusive)` : 'step'} ${ago(st.stepStartedMs)}${spec?.stepIntervalMs ? `, ${Math.round(spec.stepIntervalMs / 1000)} s per interval` : ''}`
            : '',
        ),
      ),
      zoneOrder
        ? h('p', { class: 'small', 'data-testid': 'rollout-zone-order' }, 'Zone order: ', zoneOrder.map((z, i) => h(i === st.zoneIndex ? 'strong' : 'span', {}, i ? ' → ' : '', z, i === st.zoneIndex ? ' (current)' : '')))
        : null,
      h(
        'div',
        { class: 'cols' },
        h(
          'div',
          {},
          h(
            'table',
            { class: 'grid', 'data-testid': 'rollout-weights' },
            h('thead', {}, h('tr', {}, h('th', {}, 'Zone'), h('th', {}, `${st.version} weight`))),
            h(
              'tbody',
              {},
              Object.entries(st.weights ?? {}).map(([zone, w]) =>
                h(
                  'tr',
                  { 'data-zone': zone, 'data-weight': w },
                  h('td', {}, zone, unavailable.has(zone) ? h('span', { class: 'muted small' }, ' (failed over or drained)') : null),
                  h('td', { class: 'num' }, `${w}%`),
                ),
              ),
            ),
          ),
          analysisView(a),
        ),
        h('div', {}, rolloutChartView(route, limit)),
      ),
      h(
        'div',
        { class: 'actions', role: 'group', 'aria-label': `Rollout actions of route ${route}` },
        ROLLOUT_ACTIONS.map((action) => {
          const applies = rolloutAction(st.phase, action) === 'changes';
          return h(
            'button',
            {
              type: 'button',
              class: `btn${action === 'abort' ? ' warn' : ''}`,
              'data-key': `rollout-${route}-${action}`,
              'data-action': action,
              disabled: busy || !applies,
              title: applies ? hints[action] : `Not while ${st.phase}`,
              onclick: () => rolloutActionClicked(route, action),
            },
            labels[action],
          );
        }),
      ),
      err ? h('div', { 'data-testid': 'rollout-error' }, errorBox(err)) : null,
    );
  }

  function analysisView(a) {
    if (!a) return h('p', { class: 'muted small', 'data-testid': 'rollout-analysis' }, 'No analysis yet: the first ends with the first interval.');
    const row = (label, c) =>
      h(
        'tr',
        {},
        h('td', {}, label),
        h('td', { class: 'num' }, rateText(c.canary, c.canaryFailureRatePercent)),
        h('td', { class: 'num' }, rateText(c.stable, c.stableFailureRatePercent)),
        h('td', {}, c.verdict),
      );
    return h(
      'div',
      { 'data-testid': 'rollout-analysis' },
      h('p', { class: 'small' }, 'Last analysis ', h('strong', { 'data-testid': 'rollout-verdict' }, a.verdict), ` (${ago(a.toMs)}, over ${Math.round((a.toMs - a.fromMs) / 1000)} s)`),
      h(
        'table',
        { class: 'grid small' },
        h('thead', {}, h('tr', {}, ['', 'Canary failing', 'Stable failing', 'Verdict'].map((t) => h('th', {}, t)))),
        h('tbody', {}, row('all zones', a.all), Object.entries(a.zones ?? {}).map(([z, c]) => row(z, c))),
      ),
      (a.reasons ?? []).length ? h('ul', { class: 'small' }, a.reasons.map((r) => h('li', {}, r))) : null,
    );
  }

  /** Canary against stable failure rate over the last minutes, from the
   *  load reports (the route's own clusters, per version). */
  function rolloutChartView(route, limit) {
    const series = state.rolloutTraffic[route];
    if (!series) return h('p', { class: 'muted small' }, 'Loading the failure rates…');
    if (series.error) return errorBox(series.error);
    const w = 360;
    const hgt = 120;
    const c = rolloutChart(series, w, hgt, limit);
    const box = svg('svg', { width: w, height: hgt, viewBox: `0 0 ${w} ${hgt}`, class: 'rollout-chart', role: 'img', 'data-testid': 'rollout-chart', 'data-points': `${c.points.canary},${c.points.stable}` });
    if (c.limitY != null) box.append(svg('line', { x1: 0, x2: w, y1: c.limitY.toFixed(1), y2: c.limitY.toFixed(1), class: 'threshold' }));
    box.append(svg('text', { x: 4, y: 12, class: 'axis' }, `${c.max}%`), svg('text', { x: 4, y: hgt - 4, class: 'axis' }, '0'));
    if (c.stable) box.append(svg('path', { d: c.stable, class: 'stable' }));
    if (c.canary) box.append(svg('path', { d: c.canary, class: 'canary' }));
    const label = `Failure rate, last ${ROLLOUT_MINUTES} min, axis 0 to ${c.max}%: canary ${c.latest.canary == null ? 'no requests' : `${c.latest.canary.toFixed(2)}% now`}, stable ${c.latest.stable == null ? 'no requests' : `${c.latest.stable.toFixed(2)}% now`}${limit != null ? `; limit ${limit}%` : ''}`;
    const title = svg('title');
    title.textContent = label;
    box.prepend(title);
    box.setAttribute('aria-label', label);
    return h(
      'figure',
      { class: 'rollout-figure' },
      box,
      h(
        'figcaption',
        { class: 'small' },
        h('span', { class: 'key canary' }, '— canary'),
        ' ',
        h('span', { class: 'key stable' }, '— stable'),
        limit != null ? h('span', { class: 'key limit' }, ` ┄ limit ${limit}%`) : null,
        h('span', { class: 'muted' }, ` · 0–${c.max}%, last ${ROLLOUT_MINUTES} min`),
        c.points.canary + c.points.stable === 0 ? h('span', { class: 'muted' }, ' · no load reports yet') : null,
      ),
    );
  }

  async function rolloutActionClicked(route, action) {
    const st = state.rollouts[route];
    if (!st) return;
    const url = `${path}/rollouts/${enc(route)}/${action}`;
    if (action === 'promote' || action === 'abort') {
      const to = action === 'promote' ? '100% where it runs' : '0%';
      const applied = await confirmAction({
        title: `${action === 'promote' ? 'Promote' : 'Abort'} the rollout of ${st.version} on route ${route}`,
        intro:
          action === 'promote'
            ? `Completes the rollout at once, without further analysis: ${st.version} takes all of the route's traffic, and the policy gets a revision with canary weight 100. The failover leader applies it within a second or two.`
            : `Rolls the canary back: weight 0 in every zone, and the rollout cannot be resumed (a new version in the spec starts another). The failover leader applies it within a second or two.`,
        changes: [
          { what: 'phase', from: st.phase, to: action === 'promote' ? 'completed' : 'aborted' },
          ...Object.entries(st.weights ?? {}).map(([z, w]) => ({ what: `${z}: ${st.version} weight`, from: `${w}%`, to })),
        ],
        confirmLabel: action === 'promote' ? 'Promote' : 'Abort rollout',
        danger: true,
        action: () => send('POST', url),
      });
      if (applied) delete state.rolloutErrors[route];
      afterAction();
      return;
    }
    state.rolloutBusy.add(route);
    keepFocus(main, drawRollouts);
    try {
      const r = await send('POST', url);
      delete state.rolloutErrors[route];
      toast(r?.changes === false ? `Route ${route}: already ${action === 'pause' ? 'paused' : 'progressing'}` : `Route ${route}: ${action} queued`, 'ok');
    } catch (e) {
      state.rolloutErrors[route] = { error: e, phase: st.phase };
    } finally {
      state.rolloutBusy.delete(route);
    }
    keepFocus(main, drawRollouts);
    afterAction();
  }

  function renderXds() {
    const c = state.clients;
    const body = [];
    if (!c) return;
    if (c.error) body.push(h('p', { class: 'muted' }, c.error.message));
    else if (c.items.length === 0) body.push(h('p', { class: 'muted' }, 'No xDS client is connected to this replica.'));
    else {
      body.push(h('p', { class: 'hint' }, 'Clients of this replica. Envoys subscribe to every cluster (wildcard) and so hold every policy; a gRPC client holds the hosts it dials.'));
      body.push(
        h(
          'table',
          { class: 'grid' },
          h('thead', {}, h('tr', {}, ['Node', 'Holds', 'Current version ACKed'].map((t) => h('th', {}, t)))),
          h(
            'tbody',
            {},
            c.items.map((client) => {
              const nacked = client.resources.filter((r) => r.status === 'nacked');
              const pending = client.resources.filter((r) => r.status === 'sent');
              const holds = client.resources.some((r) => r.wildcard) ? 'every policy (wildcard)' : `${client.resources.reduce((a, r) => a + r.subscribedNames, 0)} named resources`;
              return h(
                'tr',
                {},
                h('td', {}, h('span', { class: 'mono' }, client.nodeId), h('div', { class: 'muted small' }, `${client.userAgentName} ${client.userAgentVersion} · ${client.xdsVariant}`)),
                h('td', { class: 'small' }, holds),
                h(
                  'td',
                  {},
                  nacked.length
                    ? badge({ level: 'bad', icon: '✕', label: `NACK ${nacked.map((r) => r.type).join(', ')}` }, { title: nacked.map((r) => r.lastNack?.message).join('\n') })
                    : pending.length
                      ? badge({ level: 'warn', icon: '…', label: `waiting ${pending.map((r) => r.type).join(', ')}` })
                      : badge({ level: 'ok', icon: '✓', label: 'ACKed' }),
                  nacked.map((r) => h('div', { class: 'small error-text' }, `${r.type}: ${r.lastNack?.message ?? ''}`)),
                ),
              );
            }),
          ),
        ),
      );
    }
    fill(xds, h('h2', { id: 'xds-h' }, 'xDS clients'), ...body);
  }

  // Until the SRE picks revisions, the diff follows the latest change.
  let diffFrom = null;
  let diffTo = null;
  let diffPinned = false;
  function renderRevisions() {
    keepFocus(main, drawRevisions);
  }

  function drawRevisions() {
    const revs = state.revisions;
    if (revs.length === 0) return;
    const newest = revs[0].revision;
    if (!diffPinned || !revs.some((r) => r.revision === diffFrom) || !revs.some((r) => r.revision === diffTo)) {
      diffTo = newest;
      diffFrom = revs.length > 1 ? revs[1].revision : newest;
    }
    const pick = (id, label, value, set) =>
      h(
        'label',
        {},
        `${label} `,
        h(
          'select',
          { id, 'data-key': id, onchange: (e) => { set(Number(e.target.value)); diffPinned = true; renderRevisions(); } },
          revs.map((r) => h('option', { value: r.revision, selected: r.revision === value }, `#${r.revision}`)),
        ),
      );
    const a = revs.find((r) => r.revision === diffFrom);
    const b = revs.find((r) => r.revision === diffTo);
    fill(revisions, 
      h('h2', { id: 'rev-h' }, 'Revisions'),
      h(
        'table',
        { class: 'grid' },
        h('thead', {}, h('tr', {}, ['Revision', 'Generation', 'resourceVersion', 'Source', 'When', ''].map((t) => h('th', {}, t)))),
        h(
          'tbody',
          {},
          revs.slice(0, 20).map((r) =>
            h(
              'tr',
              { 'data-revision': r.revision },
              h('td', {}, `#${r.revision}`, r.revision === newest ? h('span', { class: 'muted' }, ' (current)') : null),
              h('td', { class: 'num' }, r.generation),
              h('td', { class: 'num' }, r.resourceVersion),
              h('td', {}, r.source),
              h('td', { title: r.createdAt }, ago(r.createdAt)),
              h(
                'td',
                {},
                r.revision === newest ? null : h('button', { type: 'button', class: 'btn', 'data-key': `diff-${r.revision}`, onclick: () => { diffFrom = r.revision; diffTo = newest; diffPinned = true; renderRevisions(); } }, 'Diff with current'),
                ' ',
                r.revision === newest ? null : h('button', { type: 'button', class: 'btn warn', 'data-key': `rollback-${r.revision}`, onclick: () => rollback(r) }, `Roll back to #${r.revision}…`),
              ),
            ),
          ),
        ),
      ),
      revs.length > 20 ? h('p', { class: 'muted' }, `${revs.length - 20} older revisions not shown.`) : null,
      h('div', { class: 'toolbar' }, pick('diff-from', 'Diff from', diffFrom, (v) => { diffFrom = v; }), pick('diff-to', 'to', diffTo, (v) => { diffTo = v; })),
      a && b ? diffView(specText(a), specText(b)) : null,
    );
  }

  function renderEvents() {
    fill(events, 
      h('h2', { id: 'ev-h' }, 'Recent events'),
      state.events.length === 0
        ? h('p', { class: 'muted' }, 'No event yet.')
        : h('ol', { class: 'timeline compact' }, state.events.slice(0, 15).map((e) => h('li', { class: `ev ${eventLevel(e)}` }, h('span', { class: 'kind' }, e.kind), ' ', e.message, h('span', { class: 'muted small' }, ` ${ago(e.at)}`)))),
    );
  }

  // --- actions -----------------------------------------------------------

  async function drain(z) {
    const next = drainPreview(state.status.zones, z.name);
    await confirmAction({
      title: `Drain ${z.name}`,
      intro: next
        ? `Traffic leaves ${z.name}. Expected effective weights (the failover leader decides within a second or two):`
        : `No other zone is healthy and undrained: with every zone out, the spec weights stay (fail open), so draining ${z.name} may move nothing.`,
      changes: [
        { what: `${z.name} drained`, from: 'no', to: 'yes' },
        ...(next ? weightChanges(state.status.zones, next).map((c) => ({ what: `${c.zone} weight (expected)`, from: `${c.from}%`, to: `${c.to}%` })) : []),
      ],
      confirmLabel: `Drain ${z.name}`,
      danger: true,
      action: () => send('POST', `${path}/zones/${enc(z.name)}/drain`),
    });
    afterAction();
  }

  async function undrain(z) {
    await confirmAction({
      title: `Restore ${z.name}`,
      intro: `${z.name} takes traffic again, up to its spec weight of ${z.specWeight}% if it is healthy.`,
      changes: [{ what: `${z.name} drained`, from: 'yes', to: 'no' }],
      confirmLabel: `Restore ${z.name}`,
      action: () => send('POST', `${path}/zones/${enc(z.name)}/undrain`),
    });
    afterAction();
  }

  async function setOverride() {
    const zonesNow = state.status.zones;
    const current = state.status.override?.weights ?? Object.fromEntries(zonesNow.map((z) => [z.name, z.effectiveWeight]));
    const inputs = new Map();
    const preview = h('tbody');
    const sum = h('p', { class: 'small', 'aria-live': 'polite' });
    const reason = h('input', { type: 'text', id: 'ov-reason', required: false, value: state.status.override?.reason ?? '', placeholder: 'why the weights are pinned' });
    const expires = h('input', { type: 'datetime-local', id: 'ov-expires' });
    const values = () => Object.fromEntries([...inputs].map(([z, i]) => [z, i.value === '' ? NaN : Number(i.value)]));
    const redraw = () => {
      const next = values();
      fill(preview, ...zonesNow.map((z) => h('tr', {}, h('td', {}, z.name), h('td', { class: 'from' }, `${z.effectiveWeight}%`), h('td', { 'aria-hidden': 'true' }, '→'), h('td', { class: 'to' }, Number.isNaN(next[z.name]) ? '?' : `${next[z.name]}%`))));
      const total = Object.values(next).reduce((a, b) => a + (Number.isNaN(b) ? 0 : b), 0);
      sum.textContent = `Sum: ${total}% (the server requires 100).`;
    };
    const fields = h(
      'div',
      { class: 'form' },
      zonesNow.map((z) => {
        const input = h('input', { type: 'number', min: 0, max: 100, step: 1, id: `ov-${z.name}`, 'data-zone': z.name, value: current[z.name] ?? 0, oninput: redraw });
        inputs.set(z.name, input);
        return h('label', { for: `ov-${z.name}` }, `${z.name} weight %`, input);
      }),
      h('label', { for: 'ov-reason' }, 'Reason', reason),
      h('label', { for: 'ov-expires' }, 'Expires (optional, local time)', expires),
    );
    redraw();
    await confirmAction({
      title: `Override weights of ${name}`,
      intro: 'Pins the effective weights: wins over health-based failover until cleared or expired.',
      body: h('div', {}, fields, h('table', { class: 'changes' }, h('thead', {}, h('tr', {}, h('th', {}, 'Zone'), h('th', {}, 'Now'), h('th', {}, ''), h('th', {}, 'After'))), preview), sum),
      confirmLabel: 'Set override',
      danger: true,
      action: () => {
        const body = { weights: {}, reason: reason.value };
        for (const [z, w] of Object.entries(values())) body.weights[z] = Number.isNaN(w) ? 0 : w;
        if (expires.value) body.expiresAt = new Date(expires.value).toISOString();
        return send('PUT', `${path}/override`, body);
      },
    });
    afterAction();
  }

  async function clearOverride() {
    const ov = state.status.override;
    await confirmAction({
      title: `Clear the override of ${name}`,
      intro: 'The failover leader decides the weights again (spec weights, or a failover if a zone is unhealthy).',
      changes: Object.entries(ov?.weights ?? {}).map(([z, w]) => ({ what: z, from: `${w}% (pinned)`, to: `${state.status.zones.find((x) => x.name === z)?.specWeight ?? '?'}% spec, if healthy` })),
      confirmLabel: 'Clear override',
      action: () => send('DELETE', `${path}/override`),
    });
    afterAction();
  }

  async function changeCanary(index) {
    const policy = state.policy;
    const route = policy.spec.routes[index];
    const input = h('input', { type: 'number', id: 'canary-weight', min: 0, max: 100, step: 1, value: route.canary.weight });
    const preview = h('p', { 'aria-live': 'polite' });
    const redraw = () => {
      preview.textContent = `${route.name}: canary ${route.canary.version} ${route.canary.weight}% → ${input.value}%, stable ${100 - route.canary.weight}% → ${100 - Number(input.value)}%`;
    };
    input.addEventListener('input', redraw);
    redraw();
    const version = policy.metadata.resourceVersion;
    await confirmAction({
      title: `Canary weight of route ${route.name}`,
      intro: `Changes the policy (a new revision) only if it is still at resourceVersion ${version}.`,
      body: h('div', { class: 'form' }, h('label', { for: 'canary-weight' }, `Weight of ${route.canary.version} (%)`, input), preview),
      confirmLabel: 'Change canary weight',
      action: () => {
        const routes = structuredClone(policy.spec.routes);
        routes[index].canary.weight = input.value === '' ? null : Number(input.value);
        return send('PATCH', path, { spec: { routes } }, { 'content-type': 'application/merge-patch+json', 'if-match': `"${version}"` });
      },
    });
    afterAction();
  }

  async function rollback(rev) {
    const current = state.revisions[0];
    const version = state.policy.metadata.resourceVersion;
    await confirmAction({
      title: `Roll back ${name} to revision #${rev.revision}`,
      intro: `The spec of #${rev.revision} becomes current as a new revision (only if the policy is still at resourceVersion ${version}). What changes:`,
      body: diffView(specText(current), specText(rev)),
      confirmLabel: `Roll back to #${rev.revision}`,
      danger: true,
      action: () => send('POST', `${path}/rollback`, { revision: rev.revision }, { 'if-match': `"${version}"` }),
    });
    afterAction();
  }

  every(STATUS_MS, loadStatus);
  every(SLOW_MS, loadSlow);
  every(SLOW_MS, loadRolloutTraffic);
  loadEvents();
  return {
    unmount() {
      stopped = true;
      timers.forEach((t) => clearTimeout(t));
      off();
    },
  };
}

function overallHealth(zones) {
  const bad = zones.filter((z) => z.health === 'unhealthy').length;
  if (zones.length && bad === zones.length) return 'down';
  if (bad) return 'degraded';
  if (zones.every((z) => z.health === 'unknown')) return 'unknown';
  return 'healthy';
}

/** The failover timeline the server predicts: detection moves xDS
 *  traffic; DNS clients follow after the change and their TTL. */
function formatPredicted(p) {
  if (!p || typeof p !== 'object' || typeof p.detectionMs !== 'number') return '';
  const s = (ms) => `${(ms / 1000).toFixed(1)} s`;
  const dns = (p.dnsMs ?? 0) + (p.ttlMs ?? 0);
  return `≈ ${s(p.detectionMs)} for sidecars${dns ? `, ${s(p.totalMs ?? p.detectionMs + dns)} with DNS` : ''}`;
}

function specText(rev) {
  return stableText({ labels: rev.labels, spec: rev.spec });
}

function diffView(a, b) {
  const hunks = diffHunks(lineDiff(a, b));
  const changed = hunks.some((d) => d.op === '+' || d.op === '-');
  return h(
    'pre',
    { class: 'diff', 'data-testid': 'diff', tabindex: 0, 'aria-label': 'Difference between the revisions' },
    changed ? hunks.map((d) => h('span', { class: { '+': 'add', '-': 'del', '…': 'skip', ' ': 'ctx' }[d.op] }, `${d.op === '…' ? '⋯' : d.op} ${d.line}\n`)) : 'No difference.',
  );
}

/** Spec and effective weights as one bar each, a segment per zone, so a
 *  shift shows as the segments moving. Labels carry the numbers. */
function weightBar(label, zones, field, testid) {
  const total = zones.reduce((a, z) => a + z[field], 0);
  return h(
    'div',
    { class: 'bar-row' },
    h('span', { class: 'bar-label' }, label),
    h(
      'div',
      { class: 'bar', 'data-testid': testid, role: 'img', 'aria-label': `${label} weights: ${zones.map((z) => `${z.name} ${z[field]}%`).join(', ')}` },
      total === 0
        ? h('span', { class: 'muted small' }, 'no traffic')
        : zones.map((z, i) =>
            h(
              'span',
              { class: `seg z${i % ZONE_COLOURS}${z[field] === 0 ? ' empty' : ''}`, 'data-zone': z.name, 'data-weight': z[field], style: { width: `${(z[field] * 100) / total}%` }, title: `${z.name} ${z[field]}%` },
              z[field] >= 8 ? `${z.name} ${z[field]}%` : '',
            ),
          ),
    ),
  );
}

/** The last (up to) five minutes of a zone: red where it was unhealthy (from the
 *  server's events, so it survives a reload) and its failure rate (from
 *  the transitions and the samples this page has seen). */
function sparkline(samples, transitions, current, threshold) {
  const w = 120;
  const hgt = 28;
  const now = Date.now();
  // Five minutes, or less while less is known (at least one), so a page
  // opened mid-incident is not a flat line with a tick at its end.
  const known = [...transitions.map((t) => t.at), ...samples.map((s) => s.at)].filter((t) => t > now - WINDOW_MS);
  const windowMs = Math.min(WINDOW_MS, Math.max(60_000, known.length ? now - Math.min(...known) : WINDOW_MS));
  const start = now - windowMs;
  const points = [
    ...transitions.filter((t) => t.at > start && typeof t.rate === 'number').map((t) => ({ at: t.at, rate: t.rate })),
    ...samples.filter((s) => s.at > start),
  ].sort((a, b) => a.at - b.at);
  const box = svg('svg', { width: w, height: hgt, viewBox: `0 0 ${w} ${hgt}`, class: 'spark', role: 'img' });
  const x = (t) => ((t - start) / windowMs) * w;
  const spans = healthSpans(transitions, now, windowMs, current);
  for (const span of spans.filter((sp) => sp.health === 'unhealthy')) {
    box.append(svg('rect', { x: x(span.from).toFixed(1), y: 0, width: Math.max(1, x(span.to) - x(span.from)).toFixed(1), height: hgt, class: 'down' }));
  }
  const max = Math.max(threshold * 2, 10, ...points.map((p) => p.rate));
  const y = hgt - (threshold / max) * (hgt - 2) - 1;
  box.append(svg('line', { x1: 0, x2: w, y1: y, y2: y, class: 'threshold' }));
  const last = points.at(-1);
  if (points.length) box.append(svg('path', { d: sparkPath(points, start, windowMs, w, hgt, max), class: last.rate > threshold ? 'line bad' : 'line' }));
  const down = spans.filter((sp) => sp.health === 'unhealthy');
  const title = svg('title');
  title.textContent = [
    `last ${Math.round(windowMs / 1000)} s`,
    points.length ? `failure rate now ${last.rate.toFixed(1)}%, max ${Math.max(...points.map((p) => p.rate)).toFixed(1)}% (threshold ${threshold}%)` : 'no failure-rate sample yet',
    down.length ? `unhealthy ${down.map((sp) => `${new Date(sp.from).toLocaleTimeString()}–${sp.to >= now - 1 ? 'now' : new Date(sp.to).toLocaleTimeString()}`).join(', ')}` : 'not unhealthy in that time',
  ].join('; ');
  box.prepend(title);
  box.setAttribute('aria-label', title.textContent);
  return box;
}
