// Unit tests of the dashboard's pure logic (no browser, no server).

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { ago, attention, diffHunks, drainPreview, evidenceLines, eventLevel, healthSpans, lineDiff, matches, niceCeil, parseSse, rateText, rolloutAction, rolloutChart, rolloutPhaseOf, rolloutSteps, sparkPath, stableText, weightChanges, zoneTransitions, ROLLOUT_ACTIONS } from '../app/assets/logic.js';

const track = { name: 'track-api', host: 'track.example.com', labels: { team: 'logistics', tier: 'frontend' }, health: 'degraded', flags: ['failed-over'] };
const pay = { name: 'payments', host: 'payments.example.com', labels: { team: 'payments' }, health: 'healthy', flags: [] };

test('search matches name, host and labels, every word', () => {
  const cases = [
    ['', true, true],
    ['track', true, false],
    ['payments.example', false, true],
    ['team=logistics', true, false],
    ['label:team=payments', false, true],
    ['tier=', true, false],
    ['team=', true, true],
    ['logistics', true, false],
    ['TRACK frontend', true, false],
    ['track payments', false, false],
    ['is:degraded', true, false],
    ['is:failed-over', true, false],
    ['is:healthy', false, true],
    ['team=log', false, false],
  ];
  for (const [q, a, b] of cases) {
    assert.equal(matches(track, q), a, `${q} vs track`);
    assert.equal(matches(pay, q), b, `${q} vs payments`);
  }
});

test('what needs a look sorts first', () => {
  const order = [pay, track, { ...pay, health: 'down' }, { ...pay, flags: ['override'] }, { ...pay, health: 'unknown' }]
    .sort((x, y) => attention(x) - attention(y))
    .map((s) => `${s.health}/${s.flags.join(',')}`);
  assert.deepEqual(order, ['down/', 'degraded/failed-over', 'healthy/override', 'unknown/', 'healthy/']);
});

test('line diff turns one text into the other', () => {
  const a = 'a\nb\nc\nd';
  const b = 'a\nc\nd\ne';
  const d = lineDiff(a, b);
  assert.deepEqual(d.filter((x) => x.op !== '+').map((x) => x.line).join('\n'), a);
  assert.deepEqual(d.filter((x) => x.op !== '-').map((x) => x.line).join('\n'), b);
  assert.deepEqual(d.filter((x) => x.op !== ' ').map((x) => x.op + x.line), ['-b', '+e']);
  assert.deepEqual(lineDiff('same', 'same'), [{ op: ' ', line: 'same' }]);
});

test('hunks keep context and count what they skip', () => {
  const a = Array.from({ length: 20 }, (_, i) => `line ${i}`).join('\n');
  const b = a.replace('line 10', 'LINE 10');
  const hunks = diffHunks(lineDiff(a, b), 2);
  assert.deepEqual(hunks.map((x) => x.op), ['…', ' ', ' ', '-', '+', ' ', ' ', '…']);
  assert.equal(hunks[0].line, '8 unchanged lines');
  assert.equal(hunks.at(-1).line, '7 unchanged lines');
});

test('stable text does not depend on key order', () => {
  assert.equal(stableText({ b: 1, a: { d: [2, { y: 1, x: 0 }], c: 3 } }), stableText({ a: { c: 3, d: [2, { x: 0, y: 1 }] }, b: 1 }));
});

test('drain preview spreads the weight like the weighted mode and sums to 100', () => {
  const zones = [
    { name: 'a', effectiveWeight: 50, drained: false },
    { name: 'b', effectiveWeight: 25, drained: false },
    { name: 'c', effectiveWeight: 25, drained: false },
  ];
  assert.deepEqual(drainPreview(zones, 'a'), { a: 0, b: 50, c: 50 });
  const odd = drainPreview([{ name: 'a', effectiveWeight: 40 }, { name: 'b', effectiveWeight: 30 }, { name: 'c', effectiveWeight: 30 }, { name: 'd', effectiveWeight: 30 }], 'a');
  assert.equal(Object.values(odd).reduce((x, y) => x + y, 0), 100);
  assert.deepEqual(odd, { a: 0, b: 34, c: 33, d: 33 });
  // Already drained zones take nothing; zones at 0 share evenly.
  assert.deepEqual(drainPreview([{ name: 'a', effectiveWeight: 100 }, { name: 'b', effectiveWeight: 0, drained: true }, { name: 'c', effectiveWeight: 0 }], 'a'), { a: 0, b: 0, c: 100 });
  assert.equal(drainPreview([{ name: 'a', effectiveWeight: 100 }], 'a'), null);
  // Unhealthy zones take nothing either.
  assert.deepEqual(drainPreview([{ name: 'a', effectiveWeight: 50 }, { name: 'b', effectiveWeight: 25, health: 'unhealthy' }, { name: 'c', effectiveWeight: 25, health: 'healthy' }], 'a'), { a: 0, b: 0, c: 100 });
  assert.equal(drainPreview([{ name: 'a', effectiveWeight: 100 }, { name: 'b', effectiveWeight: 0, health: 'unhealthy' }], 'a'), null);
  assert.deepEqual(weightChanges(zones, { a: 0, b: 50, c: 50 }), [
    { zone: 'a', from: 50, to: 0 },
    { zone: 'b', from: 25, to: 50 },
    { zone: 'c', from: 25, to: 50 },
  ]);
});

test('server-sent events parse across chunk boundaries', () => {
  const stream = 'id: 7\nevent: zone-drained\ndata: {"id":7}\n\n: keep-alive\n\nid: 8\nevent: gitops-sync\ndata: {"id":8,\ndata: "x":1}\n\nid: 9\nda';
  let rest = '';
  const got = [];
  for (const chunk of [stream.slice(0, 10), stream.slice(10, 47), stream.slice(47)]) {
    const r = parseSse(rest + chunk);
    rest = r.rest;
    got.push(...r.events);
  }
  assert.deepEqual(got, [
    { id: '7', event: 'zone-drained', data: '{"id":7}' },
    { id: '8', event: 'gitops-sync', data: '{"id":8,\n"x":1}' },
  ]);
  assert.equal(rest, 'id: 9\nda');
});

test('event colours come from the kind and severity, unknown kinds included', () => {
  assert.equal(eventLevel({ kind: 'zone-recovered', severity: 'info' }), 'ok');
  assert.equal(eventLevel({ kind: 'failover-critical', severity: 'critical' }), 'bad');
  assert.equal(eventLevel({ kind: 'zone-unhealthy', severity: 'warning' }), 'warn');
  assert.equal(eventLevel({ kind: 'gitops-synced', severity: 'info' }), 'info');
  assert.equal(eventLevel({ kind: 'something-new', severity: 'strange' }), 'info');
});

test('sparkline path is on a time axis and clamps', () => {
  assert.equal(sparkPath([], 0, 100, 100, 20), '');
  const p = sparkPath([{ at: 1000, rate: 0 }, { at: 1050, rate: 50 }, { at: 1100, rate: 200 }], 1000, 100, 100, 20, 100);
  assert.equal(p, 'M0.0,19.0 L50.0,10.0 L100.0,1.0');
  // Before the window clamps to the left edge; one point is a flat line.
  assert.equal(sparkPath([{ at: 0, rate: 50 }], 1000, 100, 100, 20, 100), 'M0.0,10.0 L100.0,10.0');
});

test('ago reads like a person', () => {
  const now = Date.parse('2026-01-01T00:10:00Z');
  assert.equal(ago('2026-01-01T00:09:55Z', now), '5 s ago');
  assert.equal(ago('2026-01-01T00:00:00Z', now), '10 min ago');
  assert.equal(ago(null, now), 'never');
});

test('health spans over a window come from the transition events', () => {
  const now = 1000;
  // No transition: the current health throughout.
  assert.deepEqual(healthSpans([], now, 300, 'healthy'), [{ from: 700, to: 1000, health: 'healthy' }]);
  // Went unhealthy inside the window: healthy before it.
  assert.deepEqual(healthSpans([{ at: 800, health: 'unhealthy' }], now, 300, 'unhealthy'), [
    { from: 700, to: 800, health: 'healthy' },
    { from: 800, to: 1000, health: 'unhealthy' },
  ]);
  // Recovered inside, after going down before the window.
  assert.deepEqual(healthSpans([{ at: 100, health: 'unhealthy' }, { at: 900, health: 'healthy' }], now, 300, 'healthy'), [
    { from: 700, to: 900, health: 'unhealthy' },
    { from: 900, to: 1000, health: 'healthy' },
  ]);
  // A recovery first inside the window means it was unhealthy before.
  assert.deepEqual(healthSpans([{ at: 750, health: 'healthy' }, { at: 850, health: 'unhealthy' }], now, 300, 'unhealthy'), [
    { from: 700, to: 750, health: 'unhealthy' },
    { from: 750, to: 850, health: 'healthy' },
    { from: 850, to: 1000, health: 'unhealthy' },
  ]);
});

test('zone transitions are read from the events of that zone only', () => {
  const events = [
    { kind: 'zone-recovered', at: '2026-01-01T00:00:02Z', details: { zone: 'a', failureRatePercent: 0 } },
    { kind: 'weights-changed', at: '2026-01-01T00:00:01Z', details: {} },
    { kind: 'zone-unhealthy', at: '2026-01-01T00:00:01Z', details: { zone: 'a', failureRatePercent: 40 } },
    { kind: 'zone-unhealthy', at: '2026-01-01T00:00:01Z', details: { zone: 'b', failureRatePercent: 9 } },
  ];
  assert.deepEqual(zoneTransitions(events, 'a').map((t) => [t.health, t.rate]), [['unhealthy', 40], ['healthy', 0]]);
});

test('a zone shows both rates and which one decides', () => {
  const cases = [
    [
      { decidedBy: 'traffic', traffic: { requests: 2000, failures: 160 }, probes: { requests: 30, failures: 0 }, lowerBoundPercent: 6.62, upperBoundPercent: 8.6 },
      ['traffic: 8.0% of 2000 requests', 'probes: 0.0% of 30 probes'],
      'traffic',
      '6.6–8.6%',
    ],
    [
      { decidedBy: 'probes', traffic: { requests: 0, failures: 0 }, probes: { requests: 30, failures: 3 }, lowerBoundPercent: 0.1, upperBoundPercent: 15.2 },
      ['traffic: none', 'probes: 10.0% of 30 probes'],
      'probes',
      '0.1–15.2%',
    ],
    // An older server without the fields: nothing decides, no bounds.
    [{ failureRatePercent: 0 }, ['traffic: none', 'probes: none'], undefined, null],
  ];
  for (const [zone, texts, deciding, bounds] of cases) {
    const got = evidenceLines(zone);
    assert.deepEqual(got.lines.map((l) => l.text), texts);
    assert.equal(got.lines.find((l) => l.deciding)?.source, deciding);
    assert.equal(got.bounds, bounds);
  }
});

test("rollout buttons apply where the server's check says the action changes something", () => {
  // Every (phase, action) of services/rollout/src/step.rs `check`.
  const table = {
    progressing: { pause: 'changes', resume: 'done', promote: 'changes', abort: 'changes' },
    paused: { pause: 'done', resume: 'changes', promote: 'changes', abort: 'changes' },
    failed: { pause: 'refused', resume: 'refused', promote: 'refused', abort: 'done' },
    completed: { pause: 'refused', resume: 'refused', promote: 'done', abort: 'refused' },
    aborted: { pause: 'refused', resume: 'refused', promote: 'refused', abort: 'done' },
    'some-future-phase': { pause: 'refused', resume: 'refused', promote: 'refused', abort: 'refused' },
  };
  for (const [phase, want] of Object.entries(table)) {
    assert.deepEqual(Object.fromEntries(ROLLOUT_ACTIONS.map((a) => [a, rolloutAction(phase, a)])), want, phase);
  }
  assert.equal(rolloutAction('progressing', 'restart'), 'refused');
  assert.equal(rolloutPhaseOf('paused').label, 'paused');
  assert.equal(rolloutPhaseOf('odd').level, 'unknown');
});

test('rollout steps mark the current one; a completed rollout has done them all', () => {
  const at = (phase, stepIndex) => rolloutSteps({ phase, stepIndex, steps: [5, 25, 100] }).map((s) => `${s.percent}:${s.state}`);
  assert.deepEqual(at('progressing', 0), ['5:current', '25:todo', '100:todo']);
  assert.deepEqual(at('paused', 1), ['5:done', '25:current', '100:todo']);
  assert.deepEqual(at('failed', 2), ['5:done', '25:done', '100:current']);
  assert.deepEqual(at('completed', 2), ['5:done', '25:done', '100:done']);
  assert.deepEqual(rolloutSteps(null), []);
});

test('chart axis ceilings are 1, 2 or 5 times a power of ten, within 1 to 100 %', () => {
  const cases = [[0, 1], [-3, 1], [NaN, 1], [0.5, 1], [1, 1], [1.01, 2], [2, 2], [2.5, 5], [5, 5], [7, 10], [10, 10], [11, 20], [30, 50], [51, 100], [100, 100], [250, 100]];
  for (const [v, want] of cases) assert.equal(niceCeil(v), want, String(v));
});

test('the rollout chart scales failure rates per bucket, leaves gaps where a side had no requests', () => {
  const series = {
    fromMs: 0,
    toMs: 100_000,
    bucketSeconds: 10,
    buckets: [
      { startMs: 0, canary: { requests: 100, failures: 5 }, stable: { requests: 1000, failures: 10 } },
      { startMs: 10_000, canary: { requests: 100, failures: 10 }, stable: { requests: 1000, failures: 0 } },
      // No canary request in this bucket: a gap, not a 0 %.
      { startMs: 20_000, canary: { requests: 0, failures: 0 }, stable: { requests: 1000, failures: 20 } },
      { startMs: 30_000, canary: { requests: 50, failures: 0 }, stable: { requests: 1000, failures: 0 } },
      // A report can never fail more than it made: capped at 100 %.
      { startMs: 90_000, canary: { requests: 2, failures: 9 }, stable: { requests: 0, failures: 0 } },
    ],
  };
  const c = rolloutChart(series, 100, 102, 2);
  // 100 % canary failures in the last bucket: the axis goes to 100.
  assert.equal(c.max, 100);
  assert.deepEqual(c.points, { canary: 4, stable: 4 });
  assert.deepEqual(c.latest, { canary: 100, stable: 0 });
  // x at the bucket's middle; y = h - rate/max·(h-2) - 1.
  assert.equal(c.canary, 'M5.0,96.0 L15.0,91.0 M35.0,101.0 h0.1 M95.0,1.0 h0.1');
  assert.equal(c.stable, 'M5.0,100.0 L15.0,101.0 L25.0,99.0 L35.0,101.0');
  assert.equal(c.limitY, 99);

  // Without failures the limit sets the scale, with room above it.
  const calm = rolloutChart({ ...series, buckets: series.buckets.slice(0, 1).map((b) => ({ ...b, canary: { requests: 10, failures: 0 } })) }, 100, 102, 2);
  assert.equal(calm.max, 5);
  assert.equal(calm.limitY, 101 - (2 / 5) * 100);
  // No buckets at all: empty lines, a 1 % axis, no limit line without one.
  const empty = rolloutChart({ fromMs: 0, toMs: 1000, bucketSeconds: 10, buckets: [] }, 100, 50);
  assert.deepEqual([empty.canary, empty.stable, empty.max, empty.limitY], ['', '', 1, null]);
});

test('rate text gives the percentage with its counts', () => {
  assert.equal(rateText({ requests: 406, failures: 5 }, 1.2315), '1.23% (5 of 406)');
  assert.equal(rateText({ requests: 4, failures: 1 }), '25.00% (1 of 4)');
  assert.equal(rateText({ requests: 0, failures: 0 }, null), 'no requests');
  assert.equal(rateText(undefined), 'no requests');
});
