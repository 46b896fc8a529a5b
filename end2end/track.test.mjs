// Tracking in a real browser: pings move the marker, the stale time shows offline, and /track lists drivers
// near the map's centre.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import {
  artifact, eventually, FLEET_KEY, holdSocket, hydrated, openPage, ping, postJson, shareLink, startBrowser, startServer,
} from './harness.mjs';

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
  await page.goto(`${server.url}${await shareLink(server, 'trk-1')}`);
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

test('the marker comes with the page, before its socket says anything; the next fix moves it from there', async () => {
  await postJson(server, '/api/pings', [ping('trk-early', 6.47, 3.39)]);
  const { page, problems } = await openPage(browser, server);
  // The page's tracking socket is held back (no message either way) until released.
  const { release, fromServer } = await holdSocket(page, /\/ws\/track\//);
  await page.goto(`${server.url}${await shareLink(server, 'trk-early')}`);
  await hydrated(page);
  assert.deepEqual(await eventually('the marker at the last fix, from the page itself', () => markerAt(page)), [6.47, 3.39]);
  assert.equal(await page.textContent('#driver-state'), 'On the move');
  assert.deepEqual(fromServer, [], 'the socket has said nothing');

  release();
  await eventually('the socket has sent the last fix', () => fromServer.some((m) => m.type === 'fix'));
  await postJson(server, '/api/pings', [ping('trk-early', 6.4712, 3.3921)]);
  await eventually('the marker glides to the next fix', async () => {
    const at = await markerAt(page);
    return at && Math.abs(at[0] - 6.4712) < 1e-9 && Math.abs(at[1] - 3.3921) < 1e-9;
  });
  assert.ok(fromServer.every((m) => m.type === 'fix'), `fixes only: ${fromServer.map((m) => m.type)}`);
  assert.deepEqual(problems.consoleErrors, []);
  await page.close();
});

test('revoking the share link ends the open page; a link without its token is refused', async () => {
  await postJson(server, '/api/pings', [ping('rev-1', 6.46, 3.41)]);
  const { page, problems } = await openPage(browser, server);
  await page.goto(`${server.url}${await shareLink(server, 'rev-1')}`);
  await hydrated(page);
  await eventually('the marker', () => markerAt(page));
  const { status } = await postJson(server, '/api/shares/revoke', { driver_id: 'rev-1' });
  assert.equal(status, 200);
  await eventually('the page says the link ended', async () => /stopped sharing/.test(await page.textContent('#track-problem')));
  assert.equal(await page.textContent('#driver-state'), 'This tracking link no longer works');
  await eventually('the badge says closed', async () => (await page.textContent('#link-badge')) === 'closed');
  await page.screenshot({ path: artifact('track-revoked.png') });

  await page.goto(`${server.url}/track/rev-1`);
  await hydrated(page);
  await eventually('no token, no tracking', async () => /no share token/.test(await page.textContent('#track-problem')));
  assert.deepEqual(problems.consoleErrors, []);
});

test('/track lists online drivers near the centre, nearest first, for a dispatcher with the fleet key', async () => {
  await postJson(server, '/api/pings', [ping('near-a', 6.5250, 3.3795), ping('near-b', 6.5400, 3.3900)]);
  const { page, problems } = await openPage(browser, server);
  await page.goto(`${server.url}/track`);
  await hydrated(page);
  await eventually('the picker asks for the key', async () => /needs the fleet key/.test(await page.textContent('#picker-status')));
  await page.fill('#fleet-key-input', FLEET_KEY);
  await page.click('text=Use key');
  await page.waitForURL(`${server.url}/track`);
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
