// Enter as Driver in a real browser: the emulated phone position streams to the server, moving it moves the
// driver, Stop really stops, a denied permission says what to do, the server function carries fixes when the
// socket cannot, inaccurate fixes stay home, and a token near its end is renewed.

import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import { after, before, test } from 'node:test';
import { artifact, eventually, getJson, hydrated, metric, openPage, startBrowser, startServer } from './harness.mjs';

let server;
before(async () => {
  server = await startServer(['--tick-ms', '100']);
});
after(async () => {
  await server?.stop();
});

/** The dark modules of an SVG path of unit-high runs (`M{x},{y}h{n}v1h-{n}z`), as `row,col` inside the 4-module margin. */
function modulesOfPath(d) {
  const dark = new Set();
  for (const [, x, y, n] of d.matchAll(/M(\d+),(\d+)h(\d+)v1h-\d+z/g)) {
    for (let i = 0; i < Number(n); i++) dark.add(`${Number(y) - 4},${Number(x) - 4 + i}`);
  }
  return dark;
}

/** What qrcode-generator (the page's encoder, from npm) makes of `text`, as the same set. */
function modulesOf(text) {
  const qrcode = createRequire(import.meta.url)('../node_modules/qrcode-generator/dist/qrcode.js');
  const code = qrcode(0, 'M');
  code.addData(text);
  code.make();
  const dark = new Set();
  for (let row = 0; row < code.getModuleCount(); row++) {
    for (let col = 0; col < code.getModuleCount(); col++) if (code.isDark(row, col)) dark.add(`${row},${col}`);
  }
  return dark;
}

async function driverIdOf(page) {
  return eventually('the page made a driver id', async () => (await page.textContent('#driver-id')) || false);
}

test('sharing streams the emulated position; moving it moves the driver; Stop stops', async () => {
  const browser = await startBrowser({
    permissions: ['geolocation'],
    geolocation: { latitude: 6.5, longitude: 3.35, accuracy: 12 },
  });
  try {
    const { page, problems } = await openPage(browser, server);
    await page.goto(`${server.url}/driver`);
    await hydrated(page);
    const id = await driverIdOf(page);
    assert.match(id, /^drv-[0-9a-f]{16}$/);
    assert.equal(await page.locator('#share-link').count(), 0, 'no link before sharing');

    await page.click('#share-toggle');
    const link = await eventually('a tracking link', async () => (await page.locator('#share-link').count()) && page.getAttribute('#share-link', 'href'));
    assert.ok(link.startsWith(`${server.url}/track/${id}#share=v1.shr.${id}.`), link);
    const first = await eventually('the server knows the driver', async () => {
      const { status, body } = await getJson(server, `/api/drivers/${id}`);
      return status === 200 && body;
    });
    assert.equal(first.lat, 6.5);
    assert.equal(first.lon, 3.35);
    assert.equal(await page.textContent('#share-state'), 'sharing your location');
    await eventually('acknowledged on the page', async () => Number(await page.textContent('#fixes-acked')) >= 1);
    assert.equal(await page.textContent('#link-badge'), 'live');

    await browser.context.setGeolocation({ latitude: 6.45, longitude: 3.4, accuracy: 9 });
    await eventually('the server follows the move', async () => {
      const { body } = await getJson(server, `/api/drivers/${id}`);
      return body.lat === 6.45 && body.lon === 3.4;
    });
    await page.waitForTimeout(500); // the map pans to the driver
    await page.screenshot({ path: artifact('driver.png') });

    // The id survives a reload (localStorage).
    await page.reload();
    await hydrated(page);
    assert.equal(await driverIdOf(page), id);
    await page.click('#share-toggle');
    await eventually('sharing again', async () => (await page.textContent('#share-state')) === 'sharing your location');

    await page.click('#share-toggle');
    assert.equal(await page.textContent('#share-state'), 'stopped');
    await eventually('the driver socket closed', async () => (await metric(server, 'pulsemap_subscribers{kind="driver"}')) === 0);
    const before = await metric(server, 'pulsemap_pings_accepted_total');
    await browser.context.setGeolocation({ latitude: 6.46, longitude: 3.41, accuracy: 9 });
    await new Promise((r) => setTimeout(r, 2_500));
    assert.equal(await metric(server, 'pulsemap_pings_accepted_total'), before, 'no ping after Stop');
    assert.equal((await getJson(server, `/api/drivers/${id}`)).body.lat, 6.45);
    // Stopping revoked the tracking links: the first one no longer works.
    await eventually('the first link is revoked', async () => {
      const { status, body } = await getJson(server, `/api/drivers/${id}`, link.split('#share=')[1]);
      return status === 403 && body.error.code === 'share_revoked';
    });
    assert.deepEqual(problems.consoleErrors, []);
    assert.deepEqual(problems.foreignRequests, []);
  } finally {
    await browser.close();
  }
});

test('a denied location permission shows what to do', async () => {
  const browser = await startBrowser();
  try {
    const { page, problems } = await openPage(browser, server);
    await page.goto(`${server.url}/driver`);
    await hydrated(page);
    await driverIdOf(page);
    await page.click('#share-toggle');
    await eventually('the permission message', async () => /permission was denied/.test(await page.textContent('#last-error')));
    assert.match(await page.textContent('#last-error'), /Allow location for this site/);
    await eventually('back to a start button', async () => (await page.textContent('#share-toggle')).includes('Start sharing'));
    await page.screenshot({ path: artifact('driver-denied.png') });
    assert.deepEqual(problems.consoleErrors, []);
  } finally {
    await browser.close();
  }
});

test('with no socket, fixes go through the send_ping server function', async () => {
  const browser = await startBrowser({
    permissions: ['geolocation'],
    geolocation: { latitude: 6.47, longitude: 3.38, accuracy: 10 },
  });
  try {
    const { page } = await openPage(browser, server);
    // Every /ws/driver connection is closed at once, before it reaches the server.
    await page.routeWebSocket(/\/ws\/driver$/, (ws) => ws.close({ code: 1011, reason: 'blocked by the test' }));
    await page.goto(`${server.url}/driver`);
    await hydrated(page);
    const id = await driverIdOf(page);
    await page.click('#share-toggle');
    await eventually('acknowledged through the server function', async () => Number(await page.textContent('#fixes-acked')) >= 1);
    const { status, body } = await getJson(server, `/api/drivers/${id}`);
    assert.equal(status, 200);
    assert.deepEqual([body.lat, body.lon], [6.47, 3.38]);
    assert.notEqual(await page.textContent('#link-badge'), 'live', 'the socket never came up');
    assert.equal(await metric(server, 'pulsemap_subscribers{kind="driver"}'), 0);
  } finally {
    await browser.close();
  }
});

test('a fix less accurate than the limit is shown, counted and not sent', async () => {
  const browser = await startBrowser({
    permissions: ['geolocation'],
    geolocation: { latitude: 6.48, longitude: 3.39, accuracy: 500 },
  });
  try {
    const { page } = await openPage(browser, server);
    await page.goto(`${server.url}/driver`);
    await hydrated(page);
    const id = await driverIdOf(page);
    await page.click('#share-toggle');
    await eventually('counted as inaccurate', async () => Number(await page.textContent('#fixes-inaccurate')) >= 1);
    assert.match(await page.textContent('#last-error'), /only accurate to 500 m \(the limit is 100 m\)/);
    assert.equal(await page.textContent('#fixes-sent'), '0');
    await page.waitForTimeout(1_500);
    assert.equal((await getJson(server, `/api/drivers/${id}`)).status, 404, 'the server never heard of it');
  } finally {
    await browser.close();
  }
});

test('a driver token near its end is renewed on load, for the same driver', async () => {
  // Tokens that last 24 minutes: less than the half hour before their end at which the page renews them.
  const shortLived = await startServer(['--tick-ms', '100', '--driver-token-hours', '0.4']);
  const browser = await startBrowser();
  try {
    const { page, problems } = await openPage(browser, shortLived);
    const stored = () => page.evaluate(() => JSON.parse(localStorage.getItem('pulsemap.driver') || 'null'));
    await page.goto(`${shortLived.url}/driver`);
    await hydrated(page);
    const id = await driverIdOf(page);
    const first = await eventually('credentials stored', stored);
    assert.equal(first.driver_id, id);
    await page.reload();
    await hydrated(page);
    assert.equal(await driverIdOf(page), id, 'the same driver');
    const renewed = await eventually('a fresh token stored', async () => {
      const now = await stored();
      return now && now.token !== first.token && now;
    });
    assert.equal(renewed.driver_id, id);
    assert.ok(renewed.expires_ms >= first.expires_ms, 'it lasts at least as long');
    assert.deepEqual(problems.consoleErrors, []);
  } finally {
    await browser.close();
    await shortLived.stop();
  }
});

test('on a 360 px phone: nothing wider than the screen, thumb-sized buttons, the link copies, its QR code encodes it', async () => {
  const browser = await startBrowser({
    viewport: { width: 360, height: 740 },
    deviceScaleFactor: 2,
    isMobile: true,
    hasTouch: true,
    permissions: ['geolocation', 'clipboard-read', 'clipboard-write'],
    geolocation: { latitude: 6.5, longitude: 3.35, accuracy: 12 },
  });
  try {
    const { page, problems } = await openPage(browser, server);
    await page.goto(`${server.url}/driver`);
    await hydrated(page);
    const overflow = () => page.evaluate(() => document.documentElement.scrollWidth);
    assert.ok((await overflow()) <= 360, `page ${await overflow()} px wide`);
    const toggle = await page.locator('#share-toggle').boundingBox();
    assert.ok(toggle.width >= 300 && toggle.height >= 44 && toggle.y + toggle.height <= 740, JSON.stringify(toggle));

    await page.tap('#share-toggle');
    const link = await eventually('a tracking link', async () => (await page.locator('#share-link').count()) && page.getAttribute('#share-link', 'href'));
    assert.ok((await overflow()) <= 360, `with the link shown, ${await overflow()} px wide`);
    const copy = await page.locator('#copy-link').boundingBox();
    assert.ok(copy.width >= 300 && copy.height >= 44, JSON.stringify(copy));

    await page.tap('#copy-link');
    await eventually('the page says it copied', async () => (await page.textContent('#copy-state')) === 'Link copied');
    assert.equal(await page.evaluate(() => navigator.clipboard.readText()), link, 'the clipboard holds the link');

    const path = await eventually('a QR code', async () => (await page.locator('#share-qr svg path').count()) && page.getAttribute('#share-qr svg path', 'd'));
    assert.deepEqual(modulesOfPath(path), modulesOf(link), 'the QR code is the encoder\'s code of the link, module for module');
    const qr = await page.locator('#share-qr svg').boundingBox();
    assert.ok(qr.width >= 150 && qr.x >= 0 && qr.x + qr.width <= 360, JSON.stringify(qr));
    await page.screenshot({ path: artifact('driver-360.png'), fullPage: true });

    // Stopping takes the link, and its QR code, away.
    await page.tap('#share-toggle');
    await eventually('no link once stopped', async () => (await page.locator('#share-qr').count()) === 0);
    assert.deepEqual(problems.consoleErrors, []);
    assert.deepEqual(problems.foreignRequests, []);
  } finally {
    await browser.close();
  }
});
