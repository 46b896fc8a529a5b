// The homepage in a real browser: heat drawn where pings land and cleared when the cell empties, the legend and
// counters, layer and window switches, a 0x0 map that survives, and no request leaving the machine.

import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { after, before, test } from 'node:test';
import {
  artifact, eventually, getJson, heatAlphaAt, holdSocket, hydrated, openPage, ping, postJson, startBrowser, startServer,
} from './harness.mjs';

let server;
let browser;
before(async () => {
  server = await startServer(['--tick-ms', '100']);
  browser = await startBrowser();
});
after(async () => {
  await browser?.close();
  await server?.stop();
});

const YABA = [6.5095, 3.3711];
const VI = [6.4281, 3.4219];
const IKEJA = [6.6018, 3.3515];
const text = (page, selector) => page.textContent(selector);

test('heat appears where drivers are, counters and legend match, and an emptied cell clears', async () => {
  const { page, problems } = await openPage(browser, server);
  await page.goto(server.url);
  await hydrated(page);
  await page.click('#layer-drivers'); // the page opens on the orders layer
  await page.waitForFunction(() => document.querySelector('#link-badge').textContent === 'live');
  const firstFrameFrom = Date.now();

  const drivers = ['h-1', 'h-2', 'h-3'].map((id) => ping(id, ...YABA));
  assert.equal((await postJson(server, '/api/pings', drivers)).status, 202);
  await eventually('three drivers counted', async () => (await text(page, '#drivers-online')) === '3');
  await eventually('legend top is 3 drivers in one cell', async () => (await text(page, '#legend-max')) === '3');
  const alpha = await eventually('heat drawn at Yaba', async () => (await heatAlphaAt(page, ...YABA)) > 0 && 1);
  assert.ok(alpha);
  writeFileSync(artifact('first-heat-frame.json'), JSON.stringify({
    pageLoadToFirstHeatMs: await page.evaluate(() => window.pulsemapFirstHeatMs),
    pingToHeatMs: Date.now() - firstFrameFrom,
  }));
  // Far from any heat, nothing is drawn.
  assert.equal(await heatAlphaAt(page, ...IKEJA), 0);
  await page.screenshot({ path: artifact('homepage.png') });

  // The drivers drive out of the city: the cell empties and its heat clears.
  await postJson(server, '/api/pings', ['h-1', 'h-2', 'h-3'].map((id) => ping(id, 7.9, 4.5)));
  await eventually('Yaba cleared', async () => (await heatAlphaAt(page, ...YABA)) === 0);
  await eventually('legend back to nothing in view', async () => (await text(page, '#legend-max')) === '0');
  assert.equal(await text(page, '#drivers-online'), '3', 'still online, just elsewhere');
  assert.deepEqual(problems.consoleErrors, []);
  assert.deepEqual(problems.foreignRequests, []);
});

test('layer and window switches change what is drawn and counted', async () => {
  const { page, problems } = await openPage(browser, server);
  await page.goto(server.url);
  await hydrated(page);
  assert.equal(await page.getAttribute('#layer-orders', 'aria-pressed'), 'true', 'the page opens on the orders');
  assert.match(await text(page, '.counters'), /orders in the last 1 min/, 'counted over the last minute');
  await page.click('#layer-drivers');
  const now = Date.now();
  await postJson(server, '/api/pings', [ping('sw-1', ...YABA)]);
  await postJson(server, '/api/orders/events', [
    { lat: VI[0], lon: VI[1], ts: now },
    { lat: VI[0], lon: VI[1], ts: now },
    { lat: IKEJA[0], lon: IKEJA[1], ts: now - 10 * 60_000 },
  ]);
  await eventually('the driver drawn', async () => (await heatAlphaAt(page, ...YABA)) > 0);
  assert.equal(await heatAlphaAt(page, ...VI), 0, 'orders are not on the drivers layer');

  await page.click('#layer-orders');
  assert.equal(await page.getAttribute('#layer-orders', 'aria-pressed'), 'true');
  await eventually('orders drawn at VI', async () => (await heatAlphaAt(page, ...VI)) > 0);
  await eventually('the driver gone from the orders layer', async () => (await heatAlphaAt(page, ...YABA)) === 0);
  assert.equal(await heatAlphaAt(page, ...IKEJA), 0, 'a 10-minute-old order is outside the 1-minute window');
  await eventually('1-min count', async () => (await text(page, '#orders-count')) === '2');
  assert.equal(await text(page, '#legend-max'), '2');

  await page.selectOption('#window', '15');
  await eventually('the old order drawn in the 15-minute window', async () => (await heatAlphaAt(page, ...IKEJA)) > 0);
  await eventually('15-min count', async () => (await text(page, '#orders-count')) === '3');
  assert.match(await text(page, '.counters'), /orders in the last 15 min/);
  await page.screenshot({ path: artifact('homepage-orders.png') });
  assert.deepEqual(problems.consoleErrors, []);
  assert.deepEqual(problems.foreignRequests, []);
});

test('a 0x0 map does not crash and draws once it has a size again', async () => {
  const { page, problems } = await openPage(browser, server);
  await page.goto(server.url);
  await hydrated(page);
  await page.click('#layer-drivers'); // the page opens on the orders layer
  await page.waitForFunction(() => document.querySelector('#link-badge').textContent === 'live');
  await page.evaluate(() => { document.querySelector('#map').style.cssText = 'width:0;height:0'; });
  // Earlier tests' drivers may still be online: the new one must add exactly one to what the server counts.
  const { body } = await getJson(server, '/api/heat?layer=drivers&precision=5&bbox=6.3,3.2,6.8,3.6');
  const before = body.totals.drivers_online;
  await eventually('the page shows the server\'s count', async () => Number(await text(page, '#drivers-online')) === before);
  await postJson(server, '/api/pings', [ping('zero-1', 6.55, 3.35)]);
  // Deltas keep arriving while the map has no area.
  await eventually('the counter counts the new driver', async () => Number(await text(page, '#drivers-online')) === before + 1);
  await page.waitForTimeout(500);
  await page.evaluate(() => { document.querySelector('#map').style.cssText = ''; });
  await eventually('heat drawn after the map is shown again', async () => (await heatAlphaAt(page, 6.55, 3.35)) > 0);
  assert.deepEqual(problems.consoleErrors, []);
});

test('panning moves the subscription, and the buttons lead to the other pages', async () => {
  await postJson(server, '/api/pings', [ping('abuja-1', 9.0579, 7.4951)]);
  const { page, problems } = await openPage(browser, server);
  await page.goto(server.url);
  await hydrated(page);
  await page.click('#layer-drivers'); // the page opens on the orders layer
  await page.waitForFunction(() => document.querySelector('#link-badge').textContent === 'live');
  await page.evaluate(() => window.pulsemapMap.setView([9.0579, 7.4951], 12));
  await eventually('heat drawn in Abuja after the pan', async () => (await heatAlphaAt(page, 9.0579, 7.4951)) > 0);
  await page.click('#enter-driver');
  await page.waitForURL(`${server.url}/driver`);
  await page.goto(server.url);
  await page.click('#track-driver');
  await page.waitForURL(`${server.url}/track`);
  assert.deepEqual(problems.consoleErrors, []);
});

test('the heat is in the first paint: drawn before the socket says anything, and its deltas apply on top', async () => {
  // Orders at Yaba before the page loads (it opens on the orders of the last minute).
  const yaba = Array.from({ length: 3 }, () => ({ lat: YABA[0], lon: YABA[1], ts: Date.now() }));
  assert.equal((await postJson(server, '/api/orders/events', yaba)).status, 202);
  await eventually('the server counts them', async () => {
    const { body } = await getJson(server, '/api/heat?layer=orders&window_min=1&precision=6&bbox=6.2,2.95,6.85,3.85');
    return body.cells?.length > 0;
  });
  const { page, problems } = await openPage(browser, server);
  // The page's heat socket is held back (no message either way) until released.
  const { release, fromServer } = await holdSocket(page, /\/ws\/heat$/);
  await page.goto(server.url);
  await hydrated(page);
  await eventually('Yaba drawn from the page itself', async () => (await heatAlphaAt(page, ...YABA)) > 0);
  assert.ok(Number(await text(page, '#orders-count')) >= 3, 'the counters come with the page too (the earlier tests\' orders may count)');
  assert.deepEqual(fromServer, [], 'the socket has said nothing');

  // Somewhere no test has put an order: nothing drawn there until the delta.
  const SURULERE = [6.4969, 3.3486];
  assert.equal(await heatAlphaAt(page, ...SURULERE), 0);
  release();
  await postJson(server, '/api/orders/events', [{ lat: SURULERE[0], lon: SURULERE[1], ts: Date.now() }]);
  await eventually('the new order drawn', async () => (await heatAlphaAt(page, ...SURULERE)) > 0);
  assert.ok((await heatAlphaAt(page, ...YABA)) > 0, 'on top of what the page came with');
  const kinds = fromServer.map((m) => m.type);
  assert.ok(kinds.length > 0 && kinds.every((k) => k === 'delta'), `deltas after the page's snapshot, no new snapshot: ${kinds}`);
  assert.deepEqual(problems.consoleErrors, []);
  await page.close();
});
