// The pipeline is green end to end: the server renders the page, the wasm bundle hydrates it, and a click runs
// the `#[server]` ping function through the real ingest path.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { artifact, openPage, startBrowser, startServer } from './harness.mjs';

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

test('the homepage hydrates and its button sends a ping through the server function', async () => {
  const { page, problems } = await openPage(browser, server);
  await page.goto(server.url);
  assert.equal(await page.textContent('h1'), 'pulsemap');
  assert.equal(await page.textContent('#test-ping-status'), 'no test ping sent yet');
  // Before hydration a click does nothing; keep clicking until the wasm has attached its handler.
  await page.waitForFunction(() => {
    document.querySelector('#test-ping').click();
    return document.querySelector('#test-ping-status').textContent !== 'no test ping sent yet';
  }, null, { timeout: 15_000, polling: 200 });
  await page.waitForFunction(
    () => document.querySelector('#test-ping-status').textContent === 'test ping accepted',
    null,
    { timeout: 10_000 },
  );
  const response = await fetch(`${server.url}/api/drivers/homepage-button`);
  assert.equal(response.status, 200);
  const fix = await response.json();
  assert.equal(fix.lat, 6.5244);
  await page.screenshot({ path: artifact('homepage-placeholder.png') });
  assert.deepEqual(problems.consoleErrors, []);
  assert.deepEqual(problems.foreignRequests, []);
});
