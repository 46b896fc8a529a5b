// The API against its own document: schemathesis (from PyPI, installed by scripts/setup --test) reads
// /api/openapi.json from a running server and sends every operation generated requests, valid and not, with the
// fleet key. A run fails on any 5xx, any response that does not match its documented status and schema, and any
// error body without its code (end2end/schema/hooks.py). And the docs page, in a real browser, with no network
// beyond the server.

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { test } from 'node:test';
import { FLEET_KEY, eventually, openPage, startBrowser, startServer } from './harness.mjs';

const schemathesis = process.env.SCHEMATHESIS ?? join(process.env.HOME, '.cache/pulsemap/venv/bin/schemathesis');
// Cases per operation; PULSEMAP_API_EXAMPLES for a longer run.
const examples = process.env.PULSEMAP_API_EXAMPLES ?? '100';
const checks = [
  'not_a_server_error', 'status_code_conformance', 'content_type_conformance', 'response_headers_conformance',
  'response_schema_conformance', 'missing_required_header', 'unsupported_method', 'error_body_has_a_code',
];

test('every operation answers generated requests as its document says', async () => {
  const server = await startServer();
  try {
    const args = [
      'run', `${server.url}/api/openapi.json`, '--header', `Authorization: Bearer ${FLEET_KEY}`,
      '--max-examples', examples, '--checks', checks.join(','), '--generation-database', 'none', '--no-color',
    ];
    const { code, output } = await new Promise((resolve, reject) => {
      const child = spawn(schemathesis, args, {
        cwd: new URL('./schema', import.meta.url).pathname,
        env: { ...process.env, SCHEMATHESIS_HOOKS: 'hooks' },
      });
      let output = '';
      child.stdout.on('data', (chunk) => { output += chunk; });
      child.stderr.on('data', (chunk) => { output += chunk; });
      child.on('error', reject);
      child.on('exit', (code) => resolve({ code, output }));
    });
    const summary = output.slice(output.lastIndexOf('SUMMARY'));
    console.log(summary);
    const operations = summary.match(/Tested: (\d+)/);
    const cases = summary.match(/(\d+) generated, (\d+) passed/);
    assert.equal(code, 0, `schemathesis found failures:\n${output.slice(-6000)}`);
    assert.ok(operations && Number(operations[1]) >= 19, `every operation tested: ${summary}`);
    assert.ok(cases && cases[1] === cases[2] && Number(cases[1]) > 1000, `cases: ${summary}`);
  } finally {
    await server.stop();
  }
});

test('/api/docs shows every operation of the document, from files the server serves', async () => {
  const server = await startServer();
  const browser = await startBrowser();
  try {
    const document = await (await fetch(`${server.url}/api/openapi.json`)).json();
    const operations = Object.values(document.paths).flatMap((item) => Object.keys(item)).length;
    const { page, problems } = await openPage(browser, server);
    await page.goto(`${server.url}/api/docs`);
    await eventually('the operations drawn', async () => (await page.locator('.opblock').count()) === operations);
    assert.match(await page.textContent('.info .title'), /pulsemap/);
    // One operation opened shows its responses, read from the document.
    await page.locator('.opblock-summary', { hasText: '/api/pings' }).first().click();
    await eventually('its responses', async () => (await page.locator('.responses-table .response').count()) > 1);
    assert.deepEqual(problems.foreignRequests, [], 'nothing fetched from another host');
    assert.deepEqual(problems.consoleErrors, []);
  } finally {
    await browser.close();
    await server.stop();
  }
});
