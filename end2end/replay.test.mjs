// The replay page in a real browser, over history the test writes first: the first frame shows before the
// whole range has loaded, play moves the heat and the time, pause stops them, the scrubber jumps, and the
// trail's marker moves with the time replayed.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import {
  artifact, eventually, FLEET_KEY, hydrated, metric, openPage, ping, postJson, startBrowser, startServer,
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

const text = (page, selector) => page.textContent(selector);
const index = async (page) => Number(await text(page, '#replay-index'));
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** A fingerprint of the heat canvas: its drawn pixels' alpha, summed per band of rows. */
async function heatPrint(page) {
  return page.evaluate(() => {
    const canvas = document.querySelector('canvas.leaflet-heatmap-layer');
    if (!canvas || canvas.width === 0) return '';
    const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
    const bands = new Array(16).fill(0);
    for (let i = 3; i < data.length; i += 4) bands[Math.floor((i / 4 / canvas.width) * 16 / canvas.height)] += data[i];
    return bands.join(',');
  });
}

test('replay plays, pauses, jumps with the scrubber, and moves the trail marker', async () => {
  // Twelve seconds of history: a fleet of 15 drivers sweeping north across Lagos, the tracked one among them.
  // The range starts just after the first fixes were heard, so its first frame already holds the fleet.
  let from;
  for (let k = 0; k < 12; k++) {
    const fleet = Array.from({ length: 15 }, (_, i) => ping(`sweep-${i}`, 6.42 + k * 0.012, 3.33 + i * 0.004));
    assert.equal((await postJson(server, '/api/pings', fleet)).status, 202);
    await sleep(k === 0 ? 300 : 1000);
    from ??= Date.now();
  }
  const to = Date.now();
  await eventually('history written', async () => (await metric(server, 'pulsemap_history_rows_written_total')) >= 180);

  const { page, problems } = await openPage(browser, server);
  await page.goto(`${server.url}/replay?from=${from}&to=${to}&layer=drivers&speed=1&driver=sweep-7`);
  await hydrated(page);
  const frames = Number(await text(page, '#replay-frames'));
  assert.ok(frames >= 12 && frames <= 14, `one frame a second: ${frames}`);
  const first = await page.waitForFunction(() => window.pulsemapReplayFirstFrame, null, { timeout: 10_000 });
  const info = await first.jsonValue();
  assert.ok(info.loaded < info.frames, `the first frame showed with ${info.loaded} of ${info.frames} loaded`);
  await eventually('every frame loaded', async () => Number(await text(page, '#replay-loaded')) === frames);
  assert.equal(await index(page), 1);
  assert.equal(await text(page, '#drivers-online'), '15');

  // Play: the time and the heat move.
  const heatBefore = await heatPrint(page);
  const timeBefore = await text(page, '#replay-time');
  await page.click('#play');
  await eventually('the replay moved on', async () => (await index(page)) >= 4);
  assert.notEqual(await text(page, '#replay-time'), timeBefore);
  await eventually('the heat moved', async () => (await heatPrint(page)) !== heatBefore);

  // Pause: nothing moves any more.
  await page.click('#play');
  assert.equal(await text(page, '#play'), 'Play');
  const paused = await index(page);
  const pausedTime = await text(page, '#replay-time');
  await sleep(1500);
  assert.equal(await index(page), paused);
  assert.equal(await text(page, '#replay-time'), pausedTime);

  // The scrubber jumps to a frame, time and heat with it.
  const heatAtPause = await heatPrint(page);
  await page.$eval('#scrubber', (el) => {
    el.value = '10';
    el.dispatchEvent(new Event('input', { bubbles: true }));
  });
  await eventually('jumped to frame 11', async () => (await index(page)) === 11);
  assert.notEqual(await text(page, '#replay-time'), pausedTime);
  await eventually('the heat jumped', async () => (await heatPrint(page)) !== heatAtPause);

  // The trail of one driver, and its marker following the time replayed.
  await page.fill('#trail-key', FLEET_KEY);
  await page.click('#show-trail');
  await eventually('trail drawn', async () => /fixes drawn/.test(await text(page, '#trail-status')));
  const markerAt = () => page.evaluate(() => window.pulsemapTrailMarker.getLatLng().lat);
  const late = await markerAt();
  await page.$eval('#scrubber', (el) => {
    el.value = '1';
    el.dispatchEvent(new Event('input', { bubbles: true }));
  });
  await eventually('marker moved back south', async () => (await markerAt()) < late - 0.05);
  const early = await markerAt();
  await page.click('#play');
  await eventually('marker moves north as it plays', async () => (await markerAt()) > early + 0.01);
  await page.click('#play');
  await page.screenshot({ path: artifact('replay.png') });

  // A bad key is told in words.
  await page.fill('#trail-key', 'not-the-key');
  await page.click('#show-trail');
  await eventually('refused', async () => !/fixes drawn|loading/.test(await text(page, '#trail-status')));
  assert.deepEqual(problems.consoleErrors.filter((e) => !/401|403/.test(e)), []);
  assert.deepEqual(problems.foreignRequests, []);
});
