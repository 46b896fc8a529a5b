// The browser hydrates the page the server rendered, choosing it from the path without the router (app/src/lib.rs):
// for every route, a trailing slash, and paths no route has, the page hydrates without an error and is the one the
// server sent.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { openPage, startBrowser, startServer } from './harness.mjs';

let server;
let browser;
before(async () => {
  server = await startServer();
  browser = await startBrowser();
});
after(async () => {
  await browser?.close();
  await server?.stop();
});

// path, what the page's title starts with, whether the page has a map (which its browser half creates).
const PAGES = [
  ['/', 'pulsemap — live', true],
  ['/driver', 'Enter as Driver', true],
  ['/driver/', 'Enter as Driver', true],
  ['/track', 'Track a driver', true],
  ['/track/drv-pages-1', 'Tracking', true],
  ['/order', 'Place an order', true],
  ['/order/ord-pages-1', 'Order', true],
  ['/replay', 'Replay', true],
  ['/replay/', 'Replay', true],
  ['/no-such-page', 'Not found', false],
  ['/track/a/b', 'Not found', false],
];

test('every path hydrates the page the server rendered', async () => {
  for (const [path, title, hasMap] of PAGES) {
    const { page, problems } = await openPage(browser, server);
    const response = await page.goto(`${server.url}${path}`);
    const served = await response.text();
    assert.ok(served.includes(`<title>${title}`), `${path}: the server rendered "${title}"`);
    await page.waitForLoadState('networkidle');
    // The wasm has run: the hydration module loaded it, and a page with a map has made it.
    assert.equal(await page.evaluate(() => performance.getEntriesByType('resource').some((r) => r.name.endsWith('.wasm'))), true, `${path}: the wasm was loaded`);
    if (hasMap) {
      await page.waitForFunction(() => window.pulsemapMap !== undefined, null, { timeout: 20_000 });
    }
    assert.ok((await page.title()).startsWith(title), `${path}: still "${title}" after hydration`);
    // A path no route has is answered 404 (which the browser reports as the document's own error), with the page
    // that says so; nothing else may go wrong.
    assert.equal(response.status(), hasMap ? 200 : 404, `${path}: the status`);
    const expected = hasMap ? [] : ['Failed to load resource: the server responded with a status of 404 (Not Found)'];
    assert.deepEqual(problems.consoleErrors, expected, `${path}: no error while hydrating`);
    await page.close();
  }
});
