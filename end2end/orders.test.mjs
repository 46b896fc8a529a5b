// The delivery loop in real browsers: a customer places an order on /order by clicking the map, a driver page
// with an emulated phone position accepts the offer, drives to the pickup and the drop-off, and the customer's
// page shows `assigned`, the driver moving, "Your driver is near" and `delivered`.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { artifact, eventually, hydrated, openPage, startBrowser, startServer } from './harness.mjs';

let server;
before(async () => {
  server = await startServer(['--tick-ms', '100', '--offer-secs', '30']);
});
after(async () => {
  await server?.stop();
});

const PICKUP = [6.5095, 3.3711];
const DROPOFF = [6.4541, 3.4347];
/** A place `metres` north of `[lat, lon]`. */
const north = ([lat, lon], metres) => ({ latitude: lat + metres / 111_195, longitude: lon, accuracy: 8 });

/** Clicks the map of `page` at a place (through Leaflet's own projection, so no tile is needed). */
async function clickMapAt(page, lat, lon) {
  const point = await page.evaluate(([lat, lon]) => {
    const p = window.pulsemapMap.latLngToContainerPoint([lat, lon]);
    return { x: p.x, y: p.y };
  }, [lat, lon]);
  await page.click('#order-map', { position: point });
}

test('an order placed on /order is accepted by a driver page and followed to delivered', async () => {
  const driverBrowser = await startBrowser({ permissions: ['geolocation'], geolocation: north(PICKUP, 900) });
  const customerBrowser = await startBrowser();
  try {
    // The driver is sharing (on its socket, so it takes offers) 900 m from the pickup.
    const { page: driver, problems: driverProblems } = await openPage(driverBrowser, server);
    await driver.goto(`${server.url}/driver`);
    await hydrated(driver);
    await driver.click('#share-toggle');
    await eventually('the driver\'s first fix acknowledged', async () => Number(await driver.textContent('#fixes-acked')) >= 1);

    // The customer picks the pickup, then the drop-off, and places the order.
    const { page: customer, problems: customerProblems } = await openPage(customerBrowser, server);
    await customer.goto(`${server.url}/order`);
    await hydrated(customer);
    assert.equal(await customer.isDisabled('#place-order'), true, 'nothing to place before both places are picked');
    await customer.evaluate(([lat, lon]) => window.pulsemapMap.setView([lat, lon], 12, { animate: false }), [
      (PICKUP[0] + DROPOFF[0]) / 2, (PICKUP[1] + DROPOFF[1]) / 2,
    ]);
    await clickMapAt(customer, ...PICKUP);
    await eventually('pickup picked', async () => (await customer.textContent('#pickup')) !== '—');
    await clickMapAt(customer, ...DROPOFF);
    await eventually('drop-off picked', async () => (await customer.textContent('#dropoff')) !== '—');
    const [pickedLat] = (await customer.textContent('#pickup')).split(',').map(Number);
    assert.ok(Math.abs(pickedLat - PICKUP[0]) < 0.002, `the click landed on the pickup: ${pickedLat}`);
    await customer.click('#place-order');
    await customer.waitForURL(/\/order\/ord-[0-9a-f]{16}#token=v1\.ord\./);
    await hydrated(customer);
    await eventually('the customer page is live', async () => (await customer.textContent('#link-badge')) === 'live');

    // The offer reaches the driver page, with a countdown; the driver accepts.
    await driver.waitForSelector('#offer', { timeout: 10_000 });
    assert.match(await driver.textContent('#offer-text'), /Pickup 0\.9 km away/);
    assert.match(await driver.textContent('#offer-countdown'), /\d+ s to answer/);
    await driver.screenshot({ path: artifact('driver-offer.png') });
    await driver.click('#accept-offer');
    await driver.waitForSelector('#job', { timeout: 10_000 });
    await driver.screenshot({ path: artifact('driver-job.png') });
    await eventually('the customer sees the driver assigned', async () =>
      (await customer.getAttribute('#order-state', 'class')).includes('assigned'));
    assert.match(await customer.textContent('#order-eta'), /min \(estimate\)/);

    // The driver drives to the pickup: the marker moves and "Your driver is near" shows.
    const markerAt = () => customer.evaluate(() => window.pulsemapDriverMarker?.getLatLng().lat ?? null);
    await driverBrowser.context.setGeolocation(north(PICKUP, 600));
    const first = await eventually('the driver on the customer\'s map', async () => markerAt());
    for (const metres of [400, 200, 30]) {
      await driver.waitForTimeout(1_100);
      await driverBrowser.context.setGeolocation(north(PICKUP, metres));
    }
    await eventually('"Your driver is near" on the customer page', async () =>
      /Your driver is (near|at)/.test(await customer.evaluate(() => document.querySelector('#order-banner')?.textContent ?? '')),
    15_000);
    await eventually('the marker moved toward the pickup', async () => (await markerAt()) < first - 0.001);
    await eventually('at the pickup', async () =>
      (await customer.getAttribute('#order-state', 'class')).includes('at_pickup'), 15_000);
    await customer.screenshot({ path: artifact('order-at-pickup.png') });

    // Picked up, driven to the drop-off, delivered.
    await driver.click('#picked-up');
    await eventually('picked up', async () => (await customer.getAttribute('#order-state', 'class')).includes('picked_up'));
    assert.equal(await customer.locator('#cancel-order').count(), 0, 'no cancelling once the goods are with the driver');
    await driver.waitForTimeout(1_100);
    await driverBrowser.context.setGeolocation(north(DROPOFF, 20));
    await eventually('at the drop-off', async () =>
      (await customer.getAttribute('#order-state', 'class')).includes('at_dropoff'), 15_000);
    await driver.click('#delivered');
    await eventually('delivered', async () => (await customer.getAttribute('#order-state', 'class')).includes('delivered'));
    // The driver's page hears it on its own socket: not necessarily before the customer's.
    await eventually('the driver page says delivered', async () => /Delivered/.test(await driver.textContent('#job-note')));
    const timeline = await customer.textContent('#order-timeline');
    for (const step of ['Order placed', 'A driver is on the way', 'Your driver is near the pickup', 'Picked up', 'Delivered']) {
      assert.ok(timeline.includes(step), `the timeline shows "${step}": ${timeline}`);
    }
    await customer.screenshot({ path: artifact('order-delivered.png') });
    assert.deepEqual(customerProblems.consoleErrors, []);
    assert.deepEqual(driverProblems.consoleErrors, []);
    assert.deepEqual([...customerProblems.foreignRequests, ...driverProblems.foreignRequests], []);
  } finally {
    await driverBrowser.close();
    await customerBrowser.close();
  }
});

test('a customer cancels while the order is searching, and a link without its token says so', async () => {
  const browser = await startBrowser();
  try {
    const { page } = await openPage(browser, server);
    await page.goto(`${server.url}/order`);
    await hydrated(page);
    // Nobody drives in Abuja: the order keeps searching until the customer cancels it.
    await page.evaluate(() => window.pulsemapMap.setView([9.0579, 7.4951], 13, { animate: false }));
    await clickMapAt(page, 9.0579, 7.4951);
    await clickMapAt(page, 9.07, 7.48);
    await page.click('#place-order');
    await page.waitForURL(/\/order\/ord-/);
    await hydrated(page);
    await eventually('searching', async () => (await page.getAttribute('#order-state', 'class')).includes('searching'));
    await page.click('#cancel-order');
    await eventually('cancelled', async () => (await page.getAttribute('#order-state', 'class')).includes('cancelled'));
    assert.equal(await page.locator('#cancel-order').count(), 0);

    await page.goto(`${server.url}/order/ord-0000000000000000`);
    await hydrated(page);
    await eventually('a missing token explained', async () => /no order token/.test(await page.textContent('#order-problem')));
  } finally {
    await browser.close();
  }
});

test('with the demo, the homepage lists live deliveries and each link opens the order with its driver', async () => {
  const demo = await startServer(['--tick-ms', '100', '--demo', '--demo-drivers', '60', '--demo-ping-secs', '0.2',
    '--demo-deliveries-per-min', '120']);
  const browser = await startBrowser();
  try {
    const { page, problems } = await openPage(browser, demo);
    await page.goto(demo.url);
    await hydrated(page);
    await page.waitForSelector('#live-deliveries a', { timeout: 20_000 });
    assert.match(await page.textContent('#live-deliveries'), /Watch a live delivery/);
    await page.screenshot({ path: artifact('homepage-demo.png') });
    // The list refreshes every 10 s: pick one that has a driver by then, or wait for the driver on its page.
    await page.click('#live-deliveries a');
    await page.waitForURL(/\/order\/demo-[^#]+#token=/);
    await hydrated(page);
    await eventually('the demo order\'s driver shown', async () => (await page.textContent('#order-driver')) !== '—', 20_000);
    await eventually('the demo driver on the map', async () =>
      page.evaluate(() => window.pulsemapDriverMarker?.getLatLng().lat ?? false), 20_000);
    assert.deepEqual(problems.consoleErrors, []);
  } finally {
    await browser.close();
    await demo.stop();
  }
});
