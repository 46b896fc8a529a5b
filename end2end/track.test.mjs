// Tracking in a real browser: pings move the marker, the stale time shows offline, and /track lists drivers
// near the map's centre.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { artifact, eventually, hydrated, openPage, ping, postJson, startBrowser, startServer } from './harness.mjs';

let server;
let browser;
before(async () => {
  server = await startServer(['--tick-ms', '100', '--stale-after-secs', '2']);
  browser = await startBrowser();
});
after(async () => {
  await browser?.close();
  await server?.stop();
});

const markerAt = (page) => page.evaluate(() => {
  const m = window.pulsemapMarker;
  return m ? [m.getLatLng().lat, m.getLatLng().lng] : null;
});

test('pings move the marker, and the stale time shows offline', async () => {
  await postJson(server, '/api/pings', [ping('trk-1', 6.45, 3.40)]);
  const { page, problems } = await openPage(browser, server);
  await page.goto(`${server.url}/track/trk-1`);
  await hydrated(page);
  const first = await eventually('the marker at the last known fix', () => markerAt(page));
  assert.deepEqual(first, [6.45, 3.40]);
  assert.equal(await page.textContent('#driver-state'), 'On the move');

  await postJson(server, '/api/pings', [ping('trk-1', 6.4512, 3.4021)]);
  await eventually('the marker glides to the new fix', async () => {
    const at = await markerAt(page);
    return at && Math.abs(at[0] - 6.4512) < 1e-9 && Math.abs(at[1] - 3.4021) < 1e-9;
  });
  assert.match(await page.textContent('#last-update'), /last update/);
  await page.screenshot({ path: artifact('track.png') });

  await eventually('offline after the stale time', async () => (await page.getAttribute('#driver-state', 'class')).includes('offline'));
  assert.match(await page.textContent('#driver-state'), /Offline/);
  await postJson(server, '/api/pings', [ping('trk-1', 6.452, 3.403)]);
  await eventually('online again', async () => (await page.textContent('#driver-state')) === 'On the move');
  assert.deepEqual(problems.consoleErrors, []);
  assert.deepEqual(problems.foreignRequests, []);
});

test('/track lists online drivers near the centre, nearest first', async () => {
  await postJson(server, '/api/pings', [ping('near-a', 6.5250, 3.3795), ping('near-b', 6.5400, 3.3900)]);
  const { page, problems } = await openPage(browser, server);
  await page.goto(`${server.url}/track`);
  await hydrated(page);
  const names = await eventually('both listed', async () => {
    const items = await page.$$eval('#near-drivers li a', (links) => links.map((a) => a.textContent));
    return items.includes('near-a') && items.includes('near-b') && items;
  });
  assert.ok(names.indexOf('near-a') < names.indexOf('near-b'), `nearest first: ${names}`);
  await page.screenshot({ path: artifact('track-picker.png') });
  await page.click('#near-drivers li a >> text=near-a');
  await page.waitForURL(`${server.url}/track/near-a`);
  assert.deepEqual(problems.consoleErrors, []);
});
