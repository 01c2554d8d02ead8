// The dashboard end to end: the real `meridian` binary with its own
// PostgreSQL (the examples loaded), real HTTP backends per zone on
// 127.0.0.x, and Debian's Chromium driving the app as an SRE would.
// Screenshots of each view go to web/test-output/.

import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { Meridian, backend, browser, envoy, eventually, firefoxBrowser, freePort, repo, screenshot } from './harness.mjs';

/** Names of the policies in examples/, read from the files. */
function exampleNames() {
  const dir = path.join(repo, 'examples');
  return fs
    .readdirSync(dir)
    .filter((f) => /\.ya?ml$/.test(f))
    .map((f) => fs.readFileSync(path.join(dir, f), 'utf8').match(/^metadata:\s*\n\s+name:\s*(\S+)/m)?.[1])
    .filter(Boolean)
    .sort();
}

function ordersPolicy(listen, backendPort) {
  return {
    metadata: { name: 'orders', labels: { team: 'shop' } },
    spec: {
      host: 'orders.example.com',
      port: listen,
      zones: [
        { name: 'zone-a', weight: 70, endpoints: [{ address: '127.0.0.2', port: backendPort }] },
        { name: 'zone-b', weight: 30, endpoints: [{ address: '127.0.0.3', port: backendPort }] },
      ],
      // Fast settings so the test runs in seconds; the logic is the same at the defaults.
      healthCheck: { protocol: 'http', path: '/healthz', intervalMs: 200, timeoutMs: 150 },
      failover: { mode: 'weighted', failureRatePercent: 5, windowSeconds: 3, minSamples: 5, recoverySeconds: 2 },
    },
  };
}

const barWeights = (page, bar) =>
  page.$$eval(`[data-testid="${bar}"] .seg`, (segs) => Object.fromEntries(segs.map((s) => [s.dataset.zone, Number(s.dataset.weight)])));

describe('dashboard against a running Meridian', { timeout: 300_000 }, () => {
  let m;
  let b;
  let page;
  let zoneA;
  let zoneB;
  let backendPort;

  before(async () => {
    m = await Meridian.start();
    b = await browser();
    page = await b.context.newPage();
    backendPort = await freePort();
    zoneA = await backend('127.0.0.2', backendPort);
    zoneB = await backend('127.0.0.3', backendPort);
    const created = await m.api('POST', '/api/v1/policies', ordersPolicy(await freePort(), backendPort));
    assert.equal(created.status, 201, JSON.stringify(created.body));
  });

  after(async () => {
    await zoneA?.stop().catch(() => {});
    await zoneB?.stop().catch(() => {});
    await b?.close();
    await m?.stop();
    assert.deepEqual(b?.offLoopback ?? [], [], 'the app asked for something off loopback');
  });

  test('the overview lists the example policies and filters by name, host and label', async () => {
    const examples = exampleNames();
    assert.ok(examples.length >= 2, `examples found: ${examples}`);
    const listed = (await m.api('GET', '/api/v1/policies?limit=1000')).body.items.map((p) => p.metadata.name).sort();
    for (const name of examples) assert.ok(listed.includes(name), `${name} not loaded by the server`);

    await page.goto(`${m.url}/`);
    const rowNames = () => page.$$eval('[data-testid="overview"] tbody tr:not([hidden])', (rows) => rows.map((r) => r.dataset.policy).sort());
    await eventually("every policy listed", 15_000, async () => {
      const rows = await rowNames();
      return JSON.stringify(rows) === JSON.stringify(listed) || { rows, listed };
    });
    // Every row says its state in words, not only in colour.
    const states = await page.$$eval('[data-testid="overview"] tbody tr td:first-child', (tds) => tds.map((td) => td.textContent.trim()));
    for (const s of states) assert.match(s, /healthy|degraded|down|unknown/);

    // By label: the same set the API's label filter gives.
    const [key, value] = Object.entries((await m.api('GET', `/api/v1/policies/${examples[0]}`)).body.metadata.labels)[0];
    const byLabel = (await m.api('GET', `/api/v1/policies?label=${key}=${value}`)).body.items.map((p) => p.metadata.name).sort();
    await page.fill('#search', `${key}=${value}`);
    assert.deepEqual(await rowNames(), byLabel);
    // By host and by part of a name.
    await page.fill('#search', 'orders.example');
    assert.deepEqual(await rowNames(), ['orders']);
    await page.fill('#search', examples[0].slice(0, 5));
    assert.ok((await rowNames()).includes(examples[0]));
    await page.fill('#search', '');
    await screenshot(page, 'overview');
  });

  test('deep links get the app; API paths keep their JSON answers, even for a browser', async () => {
    const html = { accept: 'text/html,application/xhtml+xml,*/*;q=0.8' };
    for (const p of ['/policies/orders', '/events', '/xds']) {
      const r = await fetch(`${m.url}${p}`, { headers: html });
      assert.equal(r.status, 200, p);
      assert.match(r.headers.get('content-type'), /^text\/html/, p);
      assert.match(await r.text(), /<title>Meridian<\/title>/, p);
    }
    for (const p of ['/api/v1/nope', '/api/v1/policies/nope', '/openapi.jsonx']) {
      const r = await fetch(`${m.url}${p}`, { headers: html });
      const body = await r.text();
      if (p === '/openapi.jsonx') {
        // Not reserved: an app path like any other.
        assert.equal(r.status, 200, p);
        continue;
      }
      assert.equal(r.status, 404, `${p}: ${body}`);
      assert.equal(JSON.parse(body).error, 'not_found', p);
    }
    const doc = await fetch(`${m.url}/openapi.json`, { headers: html });
    assert.equal(doc.status, 200);
    assert.ok((await doc.json()).openapi);
    const ready = await fetch(`${m.url}/readyz`, { headers: html });
    assert.equal((await ready.json()).status, 'ready');
  });

  test("stopping a zone's backends turns the policy degraded and moves the effective-weight bar without a reload", async () => {
    await page.goto(`${m.url}/policies/orders`);
    await page.evaluate(() => {
      window.__sameDocument = true;
    });
    await eventually('orders healthy at 70/30', 20_000, async () => {
      const w = await barWeights(page, 'effective-bar');
      const health = await page.textContent('[data-testid="policy-health"]');
      return w['zone-a'] === 70 && w['zone-b'] === 30 && health.includes('healthy') ? true : { w, health };
    });
    await screenshot(page, 'policy-healthy');

    await zoneA.stop();
    zoneA = null;
    await eventually('effective weights move to zone-b', 30_000, async () => {
      const w = await barWeights(page, 'effective-bar');
      return w['zone-a'] === 0 && w['zone-b'] === 100 ? true : w;
    });
    assert.match(await page.textContent('[data-testid="policy-health"]'), /degraded/);
    assert.deepEqual(await barWeights(page, 'spec-bar'), { 'zone-a': 70, 'zone-b': 30 }, 'the spec bar stays');
    const zoneARow = await page.textContent('[data-testid="zones"] tr[data-zone="zone-a"]');
    assert.match(zoneARow, /unhealthy/);
    // The UI agrees with the API.
    const status = (await m.api('GET', '/api/v1/policies/orders/status')).body;
    assert.equal(status.cause, 'failover');
    // Which evidence decided, as /status says: no data plane reports load
    // here, so the probes do, and the cell says so.
    const zoneAStatus = status.zones.find((z) => z.name === 'zone-a');
    assert.equal(zoneAStatus.decidedBy, 'probes');
    assert.equal(zoneAStatus.traffic.requests, 0);
    await eventually('the evidence cell marks the probes as deciding', 10_000, async () => {
      const deciding = await page.getAttribute('tr[data-zone="zone-a"] [data-testid="evidence"] [data-deciding="true"]', 'data-source');
      const text = await page.textContent('tr[data-zone="zone-a"] [data-testid="evidence"]');
      return deciding === 'probes' && /traffic: none/.test(text) && /probes: \d+\.\d% of \d+ probes/.test(text) ? true : { deciding, text };
    });
    assert.equal(await page.textContent('[data-testid="cause"]'), 'failover');
    assert.equal(await page.evaluate(() => window.__sameDocument), true, 'the page was reloaded');
    await screenshot(page, 'policy-degraded');

    // Back to the overview by its link, still without a reload.
    await page.click('nav a[data-view="overview"]');
    await eventually('orders degraded in the overview', 10_000, async () => (await page.getAttribute('tr[data-policy="orders"]', 'data-health')) === 'degraded');
    assert.ok(await page.$('tr[data-policy="orders"] [data-flag="failed-over"]'), 'failed-over flag shown');
    // The tab title counts what needs a look, as the overview API does.
    const items = (await m.api('GET', '/api/v1/dashboard/overview')).body.items;
    const needy = items.filter((i) => i.health === 'down' || i.health === 'degraded' || i.flags.length > 0).length;
    await eventually('title counts', 10_000, async () => (await page.title()) === `(${needy} need a look) Policies — Meridian` || page.title());
    assert.equal(await page.evaluate(() => window.__sameDocument), true, 'the page was reloaded');
    await screenshot(page, 'overview-degraded');

    // A fresh page still shows when zone-a went down: the sparkline's
    // history comes from the server's events, not only from this page.
    await page.goto(`${m.url}/policies/orders`);
    await page.locator('tr[data-zone="zone-a"] svg.spark rect.down').waitFor({ timeout: 10_000 });
    assert.equal(await page.locator('tr[data-zone="zone-b"] svg.spark rect.down').count(), 0);

    zoneA = await backend('127.0.0.2', backendPort);
  });

  test('a drain through the UI is confirmed, applied and visible in the API', async () => {
    // zone-a's backend is back, but it comes back only once the evidence
    // says so; until then draining zone-b would leave no zone serving,
    // which the minHealthyZones guard rail refuses (409), rightly.
    await eventually('zone-a healthy again', 90_000, async () => {
      const s = (await m.api('GET', '/api/v1/policies/orders/status')).body;
      return s.zones.find((z) => z.name === 'zone-a').health === 'healthy' || 'not yet';
    });
    await page.goto(`${m.url}/policies/orders`);
    await page.getByRole('button', { name: 'Drain zone-b…' }).click();
    const dialog = page.locator('dialog#confirm');
    await dialog.waitFor({ state: 'visible' });
    assert.match(await dialog.textContent(), /Drain zone-b/);
    // The preview names what moves before anything is applied.
    assert.match(await dialog.locator('table.changes').textContent(), /zone-b/);
    let status = (await m.api('GET', '/api/v1/policies/orders/status')).body;
    assert.equal(status.zones.find((z) => z.name === 'zone-b').drained, false, 'drained before confirming');
    await screenshot(page, 'drain-confirm');

    await dialog.getByTestId('confirm-apply').click();
    await dialog.waitFor({ state: 'hidden' });
    status = (await m.api('GET', '/api/v1/policies/orders/status')).body;
    assert.equal(status.zones.find((z) => z.name === 'zone-b').drained, true);
    const events = (await m.api('GET', '/api/v1/events?policy=orders')).body.items;
    assert.ok(events.some((e) => e.kind === 'zone-drained' && e.details.zone === 'zone-b'), 'zone-drained event');
    await page.locator('tr[data-zone="zone-b"] [data-testid="drained"]').waitFor();

    // And restored the same way.
    await page.getByRole('button', { name: 'Restore zone-b…' }).click();
    await dialog.getByTestId('confirm-apply').click();
    await dialog.waitFor({ state: 'hidden' });
    status = (await m.api('GET', '/api/v1/policies/orders/status')).body;
    assert.equal(status.zones.find((z) => z.name === 'zone-b').drained, false);
  });

  test("a refused action shows the server's message and changes nothing", async () => {
    await page.goto(`${m.url}/policies/orders`);
    await page.getByRole('button', { name: /override/i }).first().click();
    const dialog = page.locator('dialog#confirm');
    await dialog.waitFor({ state: 'visible' });
    await dialog.locator('input[data-zone="zone-a"]').fill('50');
    await dialog.locator('input[data-zone="zone-b"]').fill('40');
    await dialog.locator('#ov-reason').fill('load test');
    await dialog.getByTestId('confirm-apply').click();
    const error = dialog.locator('[role="alert"]');
    await error.waitFor();
    // What the server says to the same request, word for word.
    const refused = await m.api('PUT', '/api/v1/policies/orders/override', { weights: { 'zone-a': 50, 'zone-b': 40 }, reason: 'load test' });
    assert.equal(refused.status, 422);
    const shown = await error.textContent();
    assert.ok(shown.includes(refused.body.message), `${shown} lacks ${refused.body.message}`);
    for (const d of refused.body.details) assert.ok(shown.includes(d.message), `${shown} lacks ${d.message}`);
    assert.ok(await dialog.isVisible(), 'the dialog stays open to correct or cancel');
    await screenshot(page, 'refused');
    await dialog.getByRole('button', { name: 'Cancel' }).click();
    const status = (await m.api('GET', '/api/v1/policies/orders/status')).body;
    assert.equal(status.override, null, 'nothing was pinned');
  });

  test('the policy page works from the keyboard, and redraws keep the focus', async () => {
    await page.goto(`${m.url}/policies/orders`);
    await page.locator('[data-key="drain-zone-b"]').waitFor();
    let reached = false;
    for (let i = 0; i < 60 && !reached; i++) {
      await page.keyboard.press('Tab');
      reached = await page.evaluate(() => document.activeElement?.dataset?.key === 'drain-zone-b');
    }
    assert.ok(reached, 'Tab never reached the drain button');
    // The zones table is redrawn every 2 s; the keyboard stays put.
    await page.waitForTimeout(2500);
    assert.equal(await page.evaluate(() => document.activeElement?.dataset?.key), 'drain-zone-b');
    // A visible focus ring.
    const outline = await page.evaluate(() => getComputedStyle(document.activeElement).outlineStyle);
    assert.notEqual(outline, 'none');
    await page.keyboard.press('Enter');
    const dialog = page.locator('dialog#confirm');
    await dialog.waitFor({ state: 'visible' });
    assert.equal(await page.evaluate(() => document.activeElement?.dataset?.testid), 'confirm-apply');
    await page.keyboard.press('Escape');
    await dialog.waitFor({ state: 'hidden' });
    const status = (await m.api('GET', '/api/v1/policies/orders/status')).body;
    assert.equal(status.zones.find((z) => z.name === 'zone-b').drained, false, 'Escape applied nothing');
  });

  test("each DNS provider's sync state on the policy page is the server's", async () => {
    // A policy publishing through a provider that is not registered, so
    // the reconciler records an error for it. (The examples publish no DNS:
    // the local demo registers no provider.)
    const created = await m.api('POST', '/api/v1/policies', {
      apiVersion: 'meridian/v1',
      kind: 'GlobalTrafficPolicy',
      metadata: { name: 'dns-unregistered' },
      spec: {
        host: 'dns-unregistered.example.com',
        port: 18099,
        zones: [{ name: 'zone-x', weight: 100, endpoints: [{ address: '127.0.0.9', port: 9 }], dns: { target: '203.0.113.10', provider: 'aws-prod' } }],
      },
    });
    assert.equal(created.status, 201, JSON.stringify(created.body));
    const withDns = created.body;
    const name = withDns.metadata.name;
    const providers = await eventually('a DNS status recorded', 20_000, async () => {
      const s = (await m.api('GET', `/api/v1/policies/${name}/status`)).body;
      return s.dns.providers.length > 0 || 'none yet';
    }).then(async () => (await m.api('GET', `/api/v1/policies/${name}/status`)).body.dns.providers);
    await page.goto(`${m.url}/policies/${name}`);
    const table = page.getByTestId('dns');
    await table.waitFor();
    for (const p of providers) {
      const row = table.locator('tr', { hasText: p.provider });
      await row.waitFor();
      const text = await row.textContent();
      const word = { synced: 'synced', pending: 'pending', error: 'error' }[p.state];
      assert.ok(text.includes(word), `${text} vs ${p.state}`);
      if (p.lastError) assert.ok(text.includes(p.lastError), `${text} lacks ${p.lastError}`);
    }
    const overview = (await m.api('GET', '/api/v1/dashboard/overview')).body.items.find((i) => i.name === name);
    if (providers.some((p) => p.state !== 'synced')) assert.ok(overview.flags.includes('dns-out-of-sync'), JSON.stringify(overview));
    await screenshot(page, 'policy-dns');
  });

  test('the events timeline is live', async () => {
    await page.goto(`${m.url}/events`);
    const timeline = page.getByTestId('timeline');
    await timeline.locator('li[data-kind="zone-drained"]').first().waitFor();
    await page.evaluate(() => {
      window.__sameDocument = true;
    });
    const newest = Number(await timeline.locator('li').first().getAttribute('data-id'));
    // An event written by someone else shows up without a reload.
    const r = await m.api('POST', '/api/v1/policies/orders/zones/zone-a/drain');
    assert.equal(r.status, 200);
    const stored = (await m.api('GET', '/api/v1/events?policy=orders')).body.items.filter((e) => e.kind === 'zone-drained' && e.id > newest);
    assert.equal(stored.length, 1, 'the API recorded the drain');
    const shown = timeline.locator(`li[data-id="${stored[0].id}"]`);
    await shown.waitFor({ timeout: 10_000 });
    assert.equal(await shown.getAttribute('data-kind'), 'zone-drained');
    assert.match(await shown.textContent(), /zone-a/);
    // Newest first.
    const ids = await timeline.locator('li').evaluateAll((lis) => lis.map((li) => Number(li.dataset.id)));
    assert.deepEqual(ids, [...ids].sort((a, b) => b - a));
    assert.equal(await page.evaluate(() => window.__sameDocument), true);
    await screenshot(page, 'events');
    await m.api('POST', '/api/v1/policies/orders/zones/zone-a/undrain');
  });

  test('the xDS clients view shows a connected Envoy as the API reports it', async () => {
    const proxy = await envoy('dashboard-envoy', m.xdsPort);
    try {
      // Wait until Envoy answered both listeners and clusters (ACK or NACK).
      const client = await eventually('Envoy connected and answered', 30_000, async () => {
        const items = (await m.api('GET', '/api/v1/xds/clients')).body.items;
        const c = items.find((x) => x.nodeId === 'dashboard-envoy');
        const answered = c && ['lds', 'cds'].every((t) => c.resources.some((r) => r.type === t && ['acked', 'nacked'].includes(r.status)));
        return answered ? true : JSON.stringify(items).slice(0, 300) + proxy.log();
      }).then(async () => (await m.api('GET', '/api/v1/xds/clients')).body.items.find((x) => x.nodeId === 'dashboard-envoy'));

      // The overview counts it (and any other client of this replica).
      const listed = (await m.api('GET', '/api/v1/xds/clients')).body.items;
      const totals = (await m.api('GET', '/api/v1/dashboard/overview')).body.xds;
      assert.equal(totals.clients, listed.length);
      assert.equal(totals.nacking, listed.filter((c) => c.resources.some((r) => r.status === 'nacked')).length);

      await page.goto(`${m.url}/xds`);
      const rows = page.locator('[data-testid="xds-clients"] tr[data-node="dashboard-envoy"]');
      await rows.first().waitFor();
      const shown = await rows.evaluateAll((trs) => trs.map((tr) => tr.textContent));
      for (const r of client.resources.filter((x) => ['lds', 'cds'].includes(x.type))) {
        const row = shown.find((t) => t.includes(r.type.toUpperCase()));
        assert.ok(row, `no ${r.type} row in ${shown}`);
        assert.ok(row.includes(r.status === 'acked' ? 'ACKed' : 'NACKed'), `${row} vs ${r.status}`);
        if (r.lastAckedVersion) assert.ok(row.includes(r.lastAckedVersion), `${row} lacks ${r.lastAckedVersion}`);
        if (r.status === 'nacked') assert.ok(row.includes(r.lastNack.message), `${row} lacks the NACK message`);
      }
      await screenshot(page, 'xds');

      // The policy page lists it among the clients that hold the policy.
      await page.goto(`${m.url}/policies/orders`);
      await page.getByText('dashboard-envoy').waitFor({ timeout: 15_000 });
      await screenshot(page, 'policy-xds');
    } finally {
      await proxy.stop();
    }
  });

  test('a canary weight change and a rollback through the UI, with the revision diff', async () => {
    const name = exampleNames().find(async () => true);
    const policies = (await m.api('GET', '/api/v1/policies?limit=1000')).body.items;
    const withCanary = policies.find((p) => p.spec.routes.some((r) => r.canary));
    assert.ok(withCanary, `no example with a canary among ${name}`);
    const route = withCanary.spec.routes.find((r) => r.canary);
    const from = route.canary.weight;
    const to = from === 25 ? 30 : 25;
    await page.goto(`${m.url}/policies/${withCanary.metadata.name}`);
    await page.locator(`tr[data-route="${route.name}"] button`).click();
    const dialog = page.locator('dialog#confirm');
    await dialog.locator('#canary-weight').fill(String(to));
    assert.match(await dialog.textContent(), new RegExp(`${from}% → ${to}%`));
    await dialog.getByTestId('confirm-apply').click();
    await dialog.waitFor({ state: 'hidden' });
    const changed = (await m.api('GET', `/api/v1/policies/${withCanary.metadata.name}`)).body;
    assert.equal(changed.spec.routes.find((r) => r.name === route.name).canary.weight, to);

    // The diff between the last two revisions shows exactly that change.
    const diff = page.getByTestId('diff');
    await eventually('diff of the change', 15_000, async () => {
      const text = await diff.textContent();
      return text.includes(`- `) && text.includes(`"weight": ${from}`) && text.includes(`"weight": ${to}`) ? true : text;
    });
    const revs = (await m.api('GET', `/api/v1/policies/${withCanary.metadata.name}/revisions`)).body.items;
    const previous = revs[1].revision;
    await page.getByRole('button', { name: `Roll back to #${previous}…` }).click();
    assert.match(await dialog.getByTestId('diff').textContent(), new RegExp(`"weight": ${from}`));
    await screenshot(page, 'rollback-confirm');
    await dialog.getByTestId('confirm-apply').click();
    await dialog.waitFor({ state: 'hidden' });
    const rolled = (await m.api('GET', `/api/v1/policies/${withCanary.metadata.name}`)).body;
    assert.equal(rolled.spec.routes.find((r) => r.name === route.name).canary.weight, from);
    await screenshot(page, 'revisions');
  });

  test("a running rollout: phase, steps and weights per zone, and its buttons as the phase allows", async () => {
    // The policy page of a policy without a rollout has no rollout section.
    await page.goto(`${m.url}/policies/orders`);
    await page.locator('[data-testid="effective-bar"]').waitFor();
    assert.equal(await page.locator('[data-testid="rollouts"]').isHidden(), true, 'a rollout section without a rollout');

    // Two zones with v1 and v2 endpoints (answering, so no zone is out);
    // nothing fails over. Without traffic the leader starts the rollout and
    // holds it at its first step (inconclusive), for ten intervals of a
    // minute before it would pause on its own: longer than this test.
    const v2a = await backend('127.0.0.4', backendPort);
    const v2b = await backend('127.0.0.5', backendPort);
    const name = 'rollout-web';
    const url = `/api/v1/policies/${name}/rollouts`;
    try {
      const created = await m.api('POST', '/api/v1/policies', {
        metadata: { name },
        spec: {
          host: 'rollout-web.example.com',
          port: await freePort(),
          zones: [
            { name: 'zone-a', weight: 50, endpoints: [{ address: '127.0.0.2', port: backendPort, version: 'v1' }, { address: '127.0.0.4', port: backendPort, version: 'v2' }] },
            { name: 'zone-b', weight: 50, endpoints: [{ address: '127.0.0.3', port: backendPort, version: 'v1' }, { address: '127.0.0.5', port: backendPort, version: 'v2' }] },
          ],
          failover: { mode: 'manual' },
          routes: [
            {
              name: 'all',
              canary: {
                version: 'v2',
                weight: 0,
                rollout: { steps: [10, 50, 100], stepIntervalMs: 60_000, analysis: { maxFailureRatePercent: 2, maxFailureRateIncreasePercent: 1, minRequests: 100, inconclusiveLimit: 10 } },
              },
            },
          ],
        },
      });
      assert.equal(created.status, 201, JSON.stringify(created.body));
      const phaseIs = async (want) => {
        const api = (await m.api('GET', url)).body.all;
        return api?.phase === want || api;
      };
      await eventually('the leader started the rollout', 30_000, () => phaseIs('progressing'));

      await page.goto(`${m.url}/policies/${name}`);
      const part = page.locator('[data-testid="rollouts"] [data-rollout="all"]');
      await part.waitFor({ timeout: 15_000 });
      const phase = part.getByTestId('rollout-phase');
      const weights = () => part.locator('[data-testid="rollout-weights"] tr[data-zone]').evaluateAll((trs) => Object.fromEntries(trs.map((tr) => [tr.dataset.zone, Number(tr.dataset.weight)])));
      const buttons = () => part.locator('button[data-action]').evaluateAll((bs) => Object.fromEntries(bs.map((b) => [b.dataset.action, !b.disabled])));
      const shows = (what, want) =>
        eventually(`the page shows ${what}`, 30_000, async () => {
          const seen = { phase: await phase.getAttribute('data-phase'), weights: await weights(), buttons: await buttons() };
          return JSON.stringify(seen) === JSON.stringify({ ...seen, ...want }) || seen;
        });

      // As the API says: the first step, 10% of v2 in each zone.
      const started = (await m.api('GET', url)).body.all;
      assert.deepEqual(started.weights, { 'zone-a': 10, 'zone-b': 10 });
      await shows('the first step', {
        phase: 'progressing',
        weights: { 'zone-a': 10, 'zone-b': 10 },
        buttons: { pause: true, resume: false, promote: true, abort: true },
      });
      assert.deepEqual(await part.locator('[data-testid="rollout-steps"] li').evaluateAll((lis) => lis.map((li) => `${li.textContent}:${li.dataset.state}`)), ['10%:current', '50%:todo', '100%:todo']);
      // The chart is drawn from the traffic endpoint: no load reports here.
      const traffic = (await m.api('GET', `${url}/all/traffic?minutes=10`)).body;
      assert.deepEqual(traffic.buckets, []);
      await eventually('the chart drawn', 15_000, async () => (await part.locator('svg[data-testid="rollout-chart"]').getAttribute('data-points')) === '0,0');
      await screenshot(page, 'rollout-progressing');

      // Pause: queued, applied by the leader's next tick, shown by the next refresh.
      await part.getByRole('button', { name: 'Pause', exact: true }).click();
      await shows('paused', { phase: 'paused', weights: { 'zone-a': 10, 'zone-b': 10 }, buttons: { pause: false, resume: true, promote: true, abort: true } });
      assert.equal(await phaseIs('paused'), true);
      assert.match(await part.getByTestId('rollout-reason').textContent(), /^paused by /, 'a paused rollout says why');

      await part.getByRole('button', { name: 'Resume', exact: true }).click();
      await shows('progressing again', { phase: 'progressing', buttons: { pause: true, resume: false, promote: true, abort: true } });
      assert.equal(await phaseIs('progressing'), true);

      // Abort asks first, naming what changes; nothing happens before.
      await part.getByRole('button', { name: 'Abort…' }).click();
      const dialog = page.locator('dialog#confirm');
      await dialog.waitFor({ state: 'visible' });
      const preview = await dialog.locator('table.changes').textContent();
      for (const word of ['zone-a', 'zone-b', '10%', '0%', 'aborted']) assert.ok(preview.includes(word), `${preview} lacks ${word}`);
      await screenshot(page, 'rollout-abort-confirm');
      assert.equal(await phaseIs('progressing'), true, 'aborted before confirming');
      await dialog.getByTestId('confirm-apply').click();
      await dialog.waitFor({ state: 'hidden' });
      await shows('aborted, every weight 0, no button', {
        phase: 'aborted',
        weights: { 'zone-a': 0, 'zone-b': 0 },
        buttons: { pause: false, resume: false, promote: false, abort: false },
      });
      assert.match(await part.getByTestId('rollout-reason').textContent(), /^aborted by /);
      const aborted = (await m.api('GET', url)).body.all;
      assert.deepEqual([aborted.phase, aborted.weights], ['aborted', { 'zone-a': 0, 'zone-b': 0 }]);
      const events = (await m.api('GET', `/api/v1/events?policy=${name}`)).body.items.map((e) => e.kind);
      for (const kind of ['rollout-started', 'rollout-paused', 'rollout-aborted']) assert.ok(events.includes(kind), `${kind} not in ${events}`);

      // A page that has not caught up yet (the button still enabled): the
      // server refuses, and the page shows its message word for word.
      const refused = await m.api('POST', `${url}/all/resume`);
      assert.equal(refused.status, 409, JSON.stringify(refused.body));
      await part.locator('button[data-action="resume"]').evaluate((b) => {
        b.disabled = false;
        b.click();
      });
      const error = part.getByTestId('rollout-error');
      await error.waitFor({ timeout: 10_000 });
      const shown = await error.textContent();
      assert.ok(shown.includes(refused.body.message), `${shown} lacks ${refused.body.message}`);
      assert.match(shown, /409/);
      assert.equal(await phaseIs('aborted'), true);
      await screenshot(page, 'rollout-aborted');
    } finally {
      await v2a.stop();
      await v2b.stop();
      await m.api('DELETE', `/api/v1/policies/${name}`);
    }
  });

  test('the same in Firefox: overview, live stream, weight bars, a confirmed drain', async () => {
    const ff = await firefoxBrowser();
    try {
      const fp = await ff.newPage();
      await fp.goto(`${m.url}/`);
      const listed = (await m.api('GET', '/api/v1/policies?limit=1000')).body.items.map((p) => p.metadata.name).sort();
      await eventually('every policy listed in Firefox', 15_000, async () => {
        const rows = await fp.$$eval('[data-testid="overview"] tbody tr', (trs) => trs.map((r) => r.dataset.policy).sort());
        return JSON.stringify(rows) === JSON.stringify(listed) || rows;
      });
      await eventually('the event stream open', 10_000, async () => (await fp.textContent('#live')).includes('live') || 'not live');
      await screenshot(fp, 'firefox-overview');

      await fp.click('a[href="/policies/orders"]');
      const status = (await m.api('GET', '/api/v1/policies/orders/status')).body;
      await eventually('bars as the API says', 15_000, async () => {
        const w = await barWeights(fp, 'effective-bar');
        return status.zones.every((z) => w[z.name] === z.effectiveWeight) || w;
      });
      await fp.locator('[data-key="drain-zone-b"]').click();
      const dialog = fp.locator('dialog#confirm');
      await dialog.waitFor({ state: 'visible' });
      await dialog.getByTestId('confirm-apply').click();
      await dialog.waitFor({ state: 'hidden' });
      const after = (await m.api('GET', '/api/v1/policies/orders/status')).body;
      assert.equal(after.zones.find((z) => z.name === 'zone-b').drained, true);
      await fp.locator('tr[data-zone="zone-b"] [data-testid="drained"]').waitFor();
      await screenshot(fp, 'firefox-policy');
      await m.api('POST', '/api/v1/policies/orders/zones/zone-b/undrain');
      assert.deepEqual(ff.errors, []);
    } finally {
      await ff.close();
    }
  });

  test('the app threw no script error', () => {
    assert.deepEqual(b.errors, []);
  });
});
