// Shared by the browser tests: start the real pulsemap binary on a free port, and a headless Debian chromium
// driven by playwright-core (which never downloads a browser). Every test gets its own server and profile.

import { spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const root = new URL('..', import.meta.url).pathname;
const target = process.env.CARGO_TARGET_DIR ?? join(process.env.HOME, '.cache/pulsemap/target');
export const serverBin = process.env.PULSEMAP_BIN ?? join(target, 'debug/pulsemap');
const chromiumPath = process.env.CHROMIUM ?? '/usr/bin/chromium';

/** A path in the artifacts folder (ignored by git) for screenshots of the run. */
export function artifact(name) {
  const dir = join(root, 'artifacts');
  mkdirSync(dir, { recursive: true });
  return join(dir, name);
}

/** Starts pulsemap from the repository root (so it finds target/site) and resolves once it listens. */
export async function startServer(args = []) {
  const child = spawn(serverBin, ['--addr', '127.0.0.1:0', ...args], {
    cwd: root,
    env: { ...process.env, RUST_LOG: 'info', NO_COLOR: '1' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let log = '';
  const url = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`server did not start:\n${log}`)), 20_000);
    const onData = (chunk) => {
      log += chunk;
      const match = log.match(/listening on (http:\/\/127\.0\.0\.1:\d+)/);
      if (match) {
        clearTimeout(timer);
        resolve(match[1]);
      }
    };
    child.stdout.on('data', onData);
    child.stderr.on('data', onData);
    child.on('exit', (code) => reject(new Error(`server exited with ${code}:\n${log}`)));
  });
  return {
    url,
    log: () => log,
    async stop() {
      child.kill('SIGTERM');
      await new Promise((resolve) => child.once('exit', resolve));
    },
  };
}

/** A fresh headless chromium with its own profile; `close()` removes the profile. */
export async function startBrowser() {
  const profile = mkdtempSync(join(tmpdir(), 'pulsemap-chromium-'));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: chromiumPath,
    headless: true,
    args: [
      '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync',
    ],
  });
  return {
    context,
    async close() {
      await context.close();
      rmSync(profile, { recursive: true, force: true });
    },
  };
}

/** Opens a page that records console errors and every request to a host other than the server's. */
export async function openPage(browser, server) {
  const page = await browser.context.newPage();
  const problems = { consoleErrors: [], foreignRequests: [] };
  page.on('console', (msg) => msg.type() === 'error' && problems.consoleErrors.push(msg.text()));
  page.on('pageerror', (err) => problems.consoleErrors.push(String(err)));
  const origin = new URL(server.url).origin;
  page.on('request', (req) => {
    const url = req.url();
    if (!url.startsWith(origin) && !url.startsWith('data:')) problems.foreignRequests.push(url);
  });
  return { page, problems };
}
