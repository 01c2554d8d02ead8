// The overview with 1,000 policies: every row rendered, search by name,
// host and label still exact, and a change shows up live. Timings are
// printed for the record, never asserted (speed is for benchmarks).

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { Meridian, browser, eventually, screenshot } from './harness.mjs';

const COUNT = 1000;

function policy(i) {
  const name = `svc-${String(i).padStart(4, '0')}`;
  return {
    metadata: { name, labels: { team: `team-${i % 10}`, tier: i % 2 ? 'backend' : 'frontend' } },
    spec: {
      host: `${name}.example.com`,
      port: 8080,
      zones: [
        { name: 'zone-a', weight: 60, endpoints: [{ address: '127.0.0.2', port: 9 }] },
        { name: 'zone-b', weight: 40, endpoints: [{ address: '127.0.0.3', port: 9 }] },
      ],
    },
  };
}

describe(`the overview with ${COUNT} policies`, { timeout: 300_000 }, () => {
  let m;
  let b;
  let page;

  before(async () => {
    // The API role only: no probing of a thousand made-up endpoints.
    m = await Meridian.start({ roles: 'api' });
    b = await browser();
    page = await b.context.newPage();
    let next = 0;
    const worker = async () => {
      while (next < COUNT) {
        const r = await m.api('POST', '/api/v1/policies', policy(next++));
        assert.equal(r.status, 201, JSON.stringify(r.body));
      }
    };
    await Promise.all(Array.from({ length: 8 }, worker));
  });

  after(async () => {
    await b?.close();
    await m?.stop();
    assert.deepEqual(b?.offLoopback ?? [], []);
    assert.deepEqual(b?.errors ?? [], []);
  });

  test('every policy is listed, search stays exact, and changes arrive live', async () => {
    const total = (await m.api('GET', '/api/v1/policies?limit=1000')).body;
    const t0 = performance.now();
    const overview = await m.api('GET', '/api/v1/dashboard/overview');
    const apiMs = performance.now() - t0;
    assert.equal(overview.status, 200);
    const n = overview.body.items.length;
    assert.ok(n >= COUNT, `${n} items`);
    assert.ok(total.items.length === 1000 && total.continue, 'the list API pages where the overview does not');

    const start = performance.now();
    await page.goto(`${m.url}/`);
    await eventually('every row rendered', 60_000, async () => (await page.locator('[data-testid="overview"] tbody tr').count()) === n || 'not yet');
    const renderMs = performance.now() - start;
    console.log(`overview of ${n} policies: API ${apiMs.toFixed(0)} ms, ${(JSON.stringify(overview.body).length / 1024).toFixed(0)} KiB; page to all rows ${renderMs.toFixed(0)} ms`);

    const visible = () => page.$$eval('[data-testid="overview"] tbody tr:not([hidden])', (rows) => rows.map((r) => r.dataset.policy).sort());
    // Label: the same set as the API's label filter.
    const team3 = (await m.api('GET', '/api/v1/policies?label=team=team-3&limit=1000')).body.items.map((p) => p.metadata.name).sort();
    const t1 = performance.now();
    await page.fill('#search', 'team=team-3');
    assert.deepEqual(await visible(), team3);
    console.log(`search over ${n} rows: ${(performance.now() - t1).toFixed(0)} ms`);
    // Words are ANDed: team-3 policies are all odd-numbered, so backend.
    await page.fill('#search', 'team=team-3 tier=frontend');
    assert.deepEqual(await visible(), []);
    await page.fill('#search', 'svc-0999.example.com');
    assert.deepEqual(await visible(), ['svc-0999']);
    await page.fill('#search', '');

    // A drain made elsewhere shows in the overview without a reload.
    await page.evaluate(() => {
      window.__sameDocument = true;
    });
    assert.equal((await m.api('POST', '/api/v1/policies/svc-0500/zones/zone-b/drain')).status, 200);
    await page.locator('tr[data-policy="svc-0500"] [data-flag="drained"]').waitFor({ timeout: 15_000 });
    assert.equal(await page.evaluate(() => window.__sameDocument), true);
    await screenshot(page, 'overview-1000', { fullPage: false });
  });
});
