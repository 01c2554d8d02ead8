// Pure functions of the dashboard: no DOM, no network. Unit-tested with
// `node --test` (web/tests/logic.test.mjs), so the rules that decide what
// an SRE sees are checked without a browser.

/** How a policy's health is shown: a level for the colour, and a word and
 *  an icon so that colour is never the only signal. */
export const HEALTH = {
  healthy: { level: 'ok', icon: '✓', label: 'healthy' },
  degraded: { level: 'warn', icon: '▲', label: 'degraded' },
  down: { level: 'bad', icon: '✕', label: 'down' },
  unknown: { level: 'unknown', icon: '?', label: 'unknown' },
};

export const ZONE_HEALTH = {
  healthy: { level: 'ok', icon: '✓', label: 'healthy' },
  unhealthy: { level: 'bad', icon: '✕', label: 'unhealthy' },
  unknown: { level: 'unknown', icon: '?', label: 'unknown' },
};

/** The overview's flags, in the order the server sends them. */
export const FLAGS = {
  'failed-over': { level: 'warn', icon: '⇄', label: 'failed over' },
  'fail-open': { level: 'bad', icon: '!', label: 'all zones down: fail open' },
  override: { level: 'info', icon: '⚑', label: 'override active' },
  drained: { level: 'info', icon: '∥', label: 'zone drained' },
  'dns-out-of-sync': { level: 'warn', icon: '⟳', label: 'DNS out of sync' },
  'xds-nack': { level: 'bad', icon: '✕', label: 'xDS NACK' },
};

export function healthOf(name) {
  return HEALTH[name] ?? { level: 'unknown', icon: '?', label: String(name) };
}

export function zoneHealthOf(name) {
  return ZONE_HEALTH[name] ?? { level: 'unknown', icon: '?', label: String(name) };
}

export function flagOf(name) {
  return FLAGS[name] ?? { level: 'info', icon: '•', label: String(name) };
}

/** Sort key: what needs a look first. */
export function attention(summary) {
  const rank = { down: 0, degraded: 1, unknown: 3, healthy: 4 }[summary.health] ?? 2;
  return summary.flags.length > 0 && rank > 1 ? Math.min(rank, 2) : rank;
}

/**
 * Whether an overview row matches the search box. Words are ANDed; each
 * word matches the name, the host, or a label: `team=logistics` (or
 * `label:team=logistics`) matches that label exactly, `team=` any value
 * of the key, and a plain word any part of the name, host, label keys or
 * values. `is:degraded`, `is:override` ... match the health or a flag.
 */
export function matches(summary, query) {
  const words = String(query ?? '').trim().toLowerCase().split(/\s+/).filter(Boolean);
  return words.every((word) => matchesWord(summary, word));
}

function matchesWord(s, word) {
  if (word.startsWith('is:')) {
    const want = word.slice(3);
    return s.health === want || s.flags.includes(want);
  }
  const w = word.startsWith('label:') ? word.slice(6) : word;
  const labels = Object.entries(s.labels ?? {}).map(([k, v]) => [k.toLowerCase(), String(v).toLowerCase()]);
  const eq = w.indexOf('=');
  if (eq > 0) {
    const key = w.slice(0, eq);
    const value = w.slice(eq + 1);
    return labels.some(([k, v]) => k === key && (value === '' || v === value));
  }
  if (word.startsWith('label:')) return labels.some(([k]) => k.includes(w));
  return (
    s.name.toLowerCase().includes(w) ||
    s.host.toLowerCase().includes(w) ||
    labels.some(([k, v]) => k.includes(w) || v.includes(w))
  );
}

/** Stable text of a value for diffs: keys sorted, two-space indent. */
export function stableText(value) {
  return JSON.stringify(sortKeys(value), null, 2);
}

function sortKeys(v) {
  if (Array.isArray(v)) return v.map(sortKeys);
  if (v && typeof v === 'object') {
    return Object.fromEntries(Object.keys(v).sort().map((k) => [k, sortKeys(v[k])]));
  }
  return v;
}

/**
 * Line diff (longest common subsequence): a list of
 * `{op: ' ' | '-' | '+', line}` turning `a` into `b`. Specs are a few
 * hundred lines at most, so the quadratic table is fine.
 */
export function lineDiff(a, b) {
  const x = a.split('\n');
  const y = b.split('\n');
  const n = x.length;
  const m = y.length;
  const lcs = Array.from({ length: n + 1 }, () => new Uint32Array(m + 1));
  for (let i = n - 1; i >= 0; i--) {
    for (let j = m - 1; j >= 0; j--) {
      lcs[i][j] = x[i] === y[j] ? lcs[i + 1][j + 1] + 1 : Math.max(lcs[i + 1][j], lcs[i][j + 1]);
    }
  }
  const out = [];
  let i = 0;
  let j = 0;
  while (i < n && j < m) {
    if (x[i] === y[j]) {
      out.push({ op: ' ', line: x[i] });
      i++;
      j++;
    } else if (lcs[i + 1][j] >= lcs[i][j + 1]) {
      out.push({ op: '-', line: x[i++] });
    } else {
      out.push({ op: '+', line: y[j++] });
    }
  }
  while (i < n) out.push({ op: '-', line: x[i++] });
  while (j < m) out.push({ op: '+', line: y[j++] });
  return out;
}

/** Only the changed lines of a diff with `context` lines around them;
 *  skipped runs become `{op: '…', line: 'N unchanged lines'}`. */
export function diffHunks(diff, context = 3) {
  const keep = new Array(diff.length).fill(false);
  diff.forEach((d, i) => {
    if (d.op !== ' ') {
      for (let k = Math.max(0, i - context); k <= Math.min(diff.length - 1, i + context); k++) keep[k] = true;
    }
  });
  const out = [];
  let skipped = 0;
  diff.forEach((d, i) => {
    if (keep[i]) {
      if (skipped) out.push({ op: '…', line: `${skipped} unchanged line${skipped === 1 ? '' : 's'}` });
      skipped = 0;
      out.push(d);
    } else {
      skipped++;
    }
  });
  if (skipped) out.push({ op: '…', line: `${skipped} unchanged line${skipped === 1 ? '' : 's'}` });
  return out;
}

/** Rows `{zone, from, to}` of the zones whose weight a change moves. */
export function weightChanges(zones, next) {
  return zones
    .map((z) => ({ zone: z.name, from: z.effectiveWeight, to: next[z.name] ?? 0 }))
    .filter((r) => r.from !== r.to);
}

/**
 * The effective weights a drain would most likely give, for the
 * confirmation dialog: the drained zone's weight spread over the other
 * serving zones (not drained, not unhealthy) in proportion, as the
 * `weighted` mode does. `null` when no zone would be left serving. The
 * leader decides; the dialog labels this as expected, not promised.
 */
export function drainPreview(zones, zone) {
  const serving = zones.filter((z) => z.name !== zone && !z.drained && z.health !== 'unhealthy');
  const total = serving.reduce((s, z) => s + z.effectiveWeight, 0);
  const next = {};
  for (const z of zones) next[z.name] = 0;
  if (serving.length === 0) return null;
  const base = total > 0 ? serving.map((z) => z.effectiveWeight) : serving.map(() => 1);
  const sum = base.reduce((a, b) => a + b, 0);
  // Largest remainder, so the preview sums to exactly 100.
  const exact = base.map((w) => (w * 100) / sum);
  const floors = exact.map(Math.floor);
  let left = 100 - floors.reduce((a, b) => a + b, 0);
  const order = exact.map((e, i) => [e - floors[i], i]).sort((p, q) => q[0] - p[0] || p[1] - q[1]);
  for (const [, i] of order) {
    if (left-- <= 0) break;
    floors[i]++;
  }
  serving.forEach((z, i) => {
    next[z.name] = floors[i];
  });
  return next;
}

/** SVG path of a sparkline of `points` (`{at: ms, rate}`) on a time axis
 *  `[start, start + windowMs]` in a `w`×`h` box, rates 0..max. One point
 *  is drawn as a flat line to the right edge rather than nothing. */
export function sparkPath(points, start, windowMs, w, h, max = 100) {
  if (points.length === 0) return '';
  const x = (t) => (Math.min(Math.max(t - start, 0), windowMs) / windowMs) * w;
  const y = (v) => h - (Math.min(Math.max(v, 0), max) / max) * (h - 2) - 1;
  const drawn = points.length === 1 ? [points[0], { at: start + windowMs, rate: points[0].rate }] : points;
  return drawn.map((p, i) => `${i === 0 ? 'M' : 'L'}${x(p.at).toFixed(1)},${y(p.rate).toFixed(1)}`).join(' ');
}

/** Colour level of an event, from its severity and kind. Unknown kinds
 *  (GitOps syncs, anything added later) fall back to the severity. */
export function eventLevel(event) {
  const bySeverity = { critical: 'bad', error: 'bad', warning: 'warn', info: 'info' };
  if (event.kind === 'zone-recovered' || event.kind === 'dns-change-applied') return 'ok';
  return bySeverity[event.severity] ?? 'info';
}

/** Parses a chunk of a `text/event-stream` body. Returns the complete
 *  events and the unparsed rest to prepend to the next chunk. */
export function parseSse(buffer) {
  const events = [];
  const blocks = buffer.split(/\r?\n\r?\n/);
  const rest = blocks.pop();
  for (const block of blocks) {
    const e = { id: null, event: 'message', data: [] };
    for (const line of block.split(/\r?\n/)) {
      if (line === '' || line.startsWith(':')) continue;
      const colon = line.indexOf(':');
      const field = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? '' : line.slice(colon + 1);
      if (value.startsWith(' ')) value = value.slice(1);
      if (field === 'id') e.id = value;
      else if (field === 'event') e.event = value;
      else if (field === 'data') e.data.push(value);
    }
    if (e.data.length > 0) events.push({ id: e.id, event: e.event, data: e.data.join('\n') });
  }
  return { events, rest };
}

/** "3 s ago", "5 min ago" ... */
export function ago(when, now = Date.now()) {
  if (when == null) return 'never';
  const t = typeof when === 'number' ? when : Date.parse(when);
  if (Number.isNaN(t)) return String(when);
  const s = Math.max(0, Math.round((now - t) / 1000));
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  return `${Math.floor(s / 86400)} d ago`;
}

/**
 * A zone's health over the window `[now - windowMs, now]` as spans
 * `{from, to, health}`, from its `zone-unhealthy` / `zone-recovered`
 * events (`{at: ms, health}` in time order) and its health now. The
 * events are the server's record, so this history survives a reload,
 * unlike the samples a page collects itself.
 */
export function healthSpans(transitions, now, windowMs, current) {
  const start = now - windowMs;
  const before = transitions.filter((t) => t.at <= start).at(-1);
  const inside = transitions.filter((t) => t.at > start && t.at <= now);
  let health;
  if (before) health = before.health;
  else if (inside.length) health = inside[0].health === 'unhealthy' ? 'healthy' : 'unhealthy';
  else health = current;
  const spans = [];
  let from = start;
  for (const t of inside) {
    if (t.health === health) continue;
    if (t.at > from) spans.push({ from, to: t.at, health });
    from = t.at;
    health = t.health;
  }
  spans.push({ from, to: now, health });
  return spans;
}

/** Transitions of `zone` from a policy's events, oldest first. */
export function zoneTransitions(events, zone) {
  return events
    .filter((e) => (e.kind === 'zone-unhealthy' || e.kind === 'zone-recovered') && e.details?.zone === zone)
    .map((e) => ({ at: Date.parse(e.at), health: e.kind === 'zone-unhealthy' ? 'unhealthy' : 'healthy', rate: e.details?.failureRatePercent }))
    .sort((a, b) => a.at - b.at);
}

/**
 * What a zone's health is decided on, for the zones table: the probes' and
 * the real traffic's failure rates with their counts, which of the two
 * decides (`/status` `decidedBy`: traffic once the data planes reported
 * enough requests), and the confidence bounds the decision used.
 */
export function evidenceLines(zone) {
  const rate = (e) => (e && e.requests > 0 ? (Math.min(e.failures, e.requests) * 100) / e.requests : 0);
  const line = (source, e, unit) => ({
    source,
    deciding: zone.decidedBy === source,
    text: e && e.requests > 0 ? `${source}: ${rate(e).toFixed(1)}% of ${e.requests} ${unit}` : `${source}: none`,
  });
  return {
    lines: [line('traffic', zone.traffic, 'requests'), line('probes', zone.probes, 'probes')],
    bounds:
      Number.isFinite(zone.lowerBoundPercent) && Number.isFinite(zone.upperBoundPercent)
        ? `${zone.lowerBoundPercent.toFixed(1)}–${zone.upperBoundPercent.toFixed(1)}%`
        : null,
  };
}

// --- rollouts (issue 18) ------------------------------------------------

/** How a rollout's phase is shown (services/rollout/src/status.rs). */
export const ROLLOUT_PHASE = {
  progressing: { level: 'info', icon: '▶', label: 'progressing' },
  paused: { level: 'warn', icon: '❚❚', label: 'paused' },
  failed: { level: 'bad', icon: '✕', label: 'failed: rolled back' },
  completed: { level: 'ok', icon: '✓', label: 'completed' },
  aborted: { level: 'warn', icon: '■', label: 'aborted: rolled back' },
};

export function rolloutPhaseOf(phase) {
  return ROLLOUT_PHASE[phase] ?? { level: 'unknown', icon: '?', label: String(phase) };
}

/** The operator actions, in the order of their buttons. */
export const ROLLOUT_ACTIONS = ['pause', 'resume', 'promote', 'abort'];

/**
 * What an action does in a phase, as the server's `check`
 * (services/rollout/src/step.rs) answers it: `changes`, `done` (already
 * so: accepted, nothing happens) or `refused` (409). A button is enabled
 * only where it changes something.
 */
export function rolloutAction(phase, action) {
  const changes = {
    pause: ['progressing'],
    resume: ['paused'],
    promote: ['progressing', 'paused'],
    abort: ['progressing', 'paused'],
  };
  const done = {
    pause: ['paused'],
    resume: ['progressing'],
    promote: ['completed'],
    abort: ['aborted', 'failed'],
  };
  if (changes[action]?.includes(phase)) return 'changes';
  if (done[action]?.includes(phase)) return 'done';
  return 'refused';
}

/** The steps of a rollout, each `{percent, state}` with state `done`,
 *  `current` or `todo`; a completed rollout has every step done, and with
 *  a zone order the steps are those of the current zone. */
export function rolloutSteps(status) {
  const steps = status?.steps ?? [];
  return steps.map((percent, i) => {
    let state = i < status.stepIndex ? 'done' : i === status.stepIndex ? 'current' : 'todo';
    if (status.phase === 'completed') state = 'done';
    return { percent, state };
  });
}

/** A ceiling for a chart's axis: the smallest of 1, 2, 5 × 10ⁿ at least
 *  `v` (at least 1 %, at most 100 %). */
export function niceCeil(v) {
  if (!(v > 1)) return 1;
  if (v >= 100) return 100;
  let p = 1;
  while (p * 10 < v) p *= 10;
  for (const m of [1, 2, 5, 10]) if (m * p >= v) return Math.min(m * p, 100);
  return 100;
}

/**
 * The failure-rate chart of a rollout from its traffic series
 * (`GET …/rollouts/{route}/traffic`): a path per side (`canary`,
 * `stable`) of the failure rate in percent per bucket, drawn at the
 * bucket's middle on `[fromMs, toMs]` × `[0, max]` scaled to `w` × `h`.
 * A bucket without requests of a side is a gap in its line, not a zero
 * (no traffic is not zero failures); a point alone is a dot. `max` keeps
 * the limit (`maxFailureRatePercent`) on the chart with room above it.
 */
export function rolloutChart(series, w, h, limit = null) {
  const span = Math.max(1, series.toMs - series.fromMs);
  const bucketMs = (series.bucketSeconds ?? 10) * 1000;
  const rates = { canary: [], stable: [] };
  for (const b of series.buckets ?? []) {
    for (const side of ['canary', 'stable']) {
      const c = b[side];
      if (c && c.requests > 0) rates[side].push({ at: b.startMs + bucketMs / 2, rate: (Math.min(c.failures, c.requests) * 100) / c.requests });
    }
  }
  const seen = [...rates.canary, ...rates.stable].map((p) => p.rate);
  const max = niceCeil(Math.max(limit ? limit * 1.5 : 0, ...seen));
  const x = (t) => (Math.min(Math.max(t - series.fromMs, 0), span) / span) * w;
  const y = (v) => h - (Math.min(Math.max(v, 0), max) / max) * (h - 2) - 1;
  const path = (points) => {
    let d = '';
    points.forEach((p, i) => {
      const joined = i > 0 && p.at - points[i - 1].at <= bucketMs * 1.5;
      const alone = !joined && !(i + 1 < points.length && points[i + 1].at - p.at <= bucketMs * 1.5);
      d += `${d ? ' ' : ''}${joined ? 'L' : 'M'}${x(p.at).toFixed(1)},${y(p.rate).toFixed(1)}${alone ? ' h0.1' : ''}`;
    });
    return d;
  };
  const last = (side) => rates[side].at(-1)?.rate ?? null;
  return {
    max,
    canary: path(rates.canary),
    stable: path(rates.stable),
    limitY: limit == null ? null : y(limit),
    points: { canary: rates.canary.length, stable: rates.stable.length },
    latest: { canary: last('canary'), stable: last('stable') },
  };
}

/** "1.23% (5 of 406)", or "no requests". */
export function rateText(counts, rate) {
  if (!counts || !counts.requests) return 'no requests';
  const r = typeof rate === 'number' ? rate : (counts.failures * 100) / counts.requests;
  return `${r.toFixed(2)}% (${counts.failures} of ${counts.requests})`;
}
