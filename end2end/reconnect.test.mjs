// Losing the server: the homepage shows it and resubscribes when it is back; the driver page keeps its fixes
// and delivers them when it is back.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  eventually, getJson, heatAlphaAt, hydrated, metric, openPage, ping, postJson, restartablePort, startBrowser,
  startServer,
} from './harness.mjs';

const badge = (page) => page.textContent('#link-badge');

test('the homepage reconnects with backoff and resubscribes', async () => {
  let server = await startServer(['--tick-ms', '100'], { port: await restartablePort() });
  const browser = await startBrowser();
  try {
    const { page } = await openPage(browser, server);
    await page.goto(server.url);
    await hydrated(page);
    await page.click('#layer-drivers');
    await eventually('live', async () => (await badge(page)) === 'live');
    await server.stop();
    // While the server is away the page waits longer and longer between attempts: the badge says how long.
    const waits = [];
    const watchUntil = Date.now() + 9_000;
    while (Date.now() < watchUntil) {
      const match = (await badge(page)).match(/(?:reconnecting in|retry in) (\d+)s/);
      if (match && Number(match[1]) !== waits[waits.length - 1]) waits.push(Number(match[1]));
      await page.waitForTimeout(100);
    }
    assert.ok(waits.length >= 3, `several attempts: ${waits}`);
    assert.ok(waits[0] <= 1, `the first retry comes at once: ${waits}`);
    assert.ok(Math.max(...waits) >= 4, `later retries wait longer: ${waits}`);
    server = await startServer(['--tick-ms', '100'], { port: server.port });
    await eventually('live again', async () => (await badge(page)) === 'live', 20_000);
    // The new server has a fresh engine: heat from it proves the page subscribed again.
    await postJson(server, '/api/pings', [ping('back-1', 6.5095, 3.3711)]);
    await eventually('heat from the new server', async () => (await heatAlphaAt(page, 6.5095, 3.3711)) > 0);
  } finally {
    await browser.close();
    await server.stop();
  }
});

test('the driver page queues fixes while the server is away and delivers them when it is back', async () => {
  let server = await startServer(['--tick-ms', '100'], { port: await restartablePort() });
  const browser = await startBrowser({
    permissions: ['geolocation'],
    geolocation: { latitude: 6.5, longitude: 3.35, accuracy: 10 },
  });
  try {
    const { page } = await openPage(browser, server);
    await page.goto(`${server.url}/driver`);
    await hydrated(page);
    const id = await eventually('driver id', async () => (await page.textContent('#driver-id')) || false);
    await page.click('#share-toggle');
    await eventually('acknowledged', async () => Number(await page.textContent('#fixes-acked')) >= 1);

    await server.stop();
    await eventually('link down', async () => /reconnecting|offline/.test(await badge(page)));
    for (const [lat, lon] of [[6.51, 3.36], [6.52, 3.37]]) {
      await browser.context.setGeolocation({ latitude: lat, longitude: lon, accuracy: 10 });
      await page.waitForTimeout(1_200);
    }
    await eventually('fixes queued', async () => Number(await page.textContent('#fixes-queued')) >= 2);
    assert.match(await page.textContent('#last-error'), /No connection|fixes wait/);
    const queued = Number(await page.textContent('#fixes-queued'));
    const ackedBefore = Number(await page.textContent('#fixes-acked'));

    server = await startServer(['--tick-ms', '100'], { port: server.port });
    await eventually('queue empty', async () => (await page.textContent('#fixes-queued')) === '0', 20_000);
    // Every queued fix was acknowledged by the new server (a heartbeat may have joined the queue meanwhile).
    await eventually('every queued fix acknowledged', async () => Number(await page.textContent('#fixes-acked')) - ackedBefore >= queued);
    assert.ok(await metric(server, 'pulsemap_pings_accepted_total') >= queued, 'the new server took them');
    const fix = await eventually('the last queued fix is where the driver is', async () => {
      const { status, body } = await getJson(server, `/api/drivers/${id}`);
      return status === 200 && body.lat === 6.52 && body;
    });
    assert.equal(fix.lon, 3.37);
    assert.equal(await page.textContent('#fixes-dropped'), '0');
  } finally {
    await browser.close();
    await server.stop();
  }
});
