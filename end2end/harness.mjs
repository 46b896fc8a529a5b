// Shared by the browser tests: start the real pulsemap binary on a free port, and a headless Debian chromium
// driven by playwright-core (which never downloads a browser). Every test gets its own server and profile.

import { spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const root = new URL('..', import.meta.url).pathname;
const target = process.env.CARGO_TARGET_DIR ?? join(process.env.HOME, '.cache/pulsemap/target');
export const serverBin = process.env.PULSEMAP_BIN ?? join(target, 'debug/pulsemap');
const chromiumPath = process.env.CHROMIUM ?? '/usr/bin/chromium';

/**
 * A free port for a server the test will stop and start again on it. Chosen below the kernel's range for ports
 * it hands out itself (ip_local_port_range), so no other process's connection takes it while it is free.
 */
export async function restartablePort() {
  let low = 32768;
  try {
    low = Number(readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/)[0]) || low;
  } catch { /* not Linux: keep the usual floor */ }
  for (;;) {
    const port = 10000 + Math.floor(Math.random() * Math.max(1, low - 10000));
    const free = await new Promise((resolve) => {
      const probe = createServer().once('error', () => resolve(false));
      probe.listen(port, '127.0.0.1', () => probe.close(() => resolve(true)));
    });
    if (free) return port;
  }
}

/** A path in the artifacts folder (ignored by git) for screenshots of the run. */
export function artifact(name) {
  const dir = join(root, 'artifacts');
  mkdirSync(dir, { recursive: true });
  return join(dir, name);
}

/**
 * Starts pulsemap from the repository root (so it finds target/site) and resolves once it listens. Map tiles
 * are off: the machine has no internet and the tests must not depend on tiles.
 */
export async function startServer(args = [], { port = 0, dataDir } = {}) {
  // History goes to a directory of the test's own (removed at exit), never into the clone.
  const data = dataDir ?? tempDataDir();
  const child = spawn(serverBin, ['--addr', `127.0.0.1:${port}`, '--tile-url', 'none', '--data-dir', data, ...args], {
    cwd: root,
    // A configured secret, as in production: tokens survive a restart (the reconnect tests restart the server).
    env: {
      ...process.env,
      RUST_LOG: 'info',
      NO_COLOR: '1',
      PULSEMAP_SECRET: SECRET,
      PULSEMAP_FLEET_KEY: FLEET_KEY,
      PULSEMAP_ADMIN_KEY: ADMIN_KEY,
    },
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
    port: Number(new URL(url).port),
    log: () => log,
    /** SIGTERM, then wait for the exit; a no-op when it already exited. */
    async stop() {
      if (child.exitCode !== null || child.signalCode !== null) return;
      const exited = new Promise((resolve) => child.once('exit', resolve));
      child.kill('SIGTERM');
      await exited;
    },
  };
}

const dataDirs = [];
process.on('exit', () => dataDirs.forEach((dir) => rmSync(dir, { recursive: true, force: true })));

/** A data directory for a test server, removed when the test process exits. */
export function tempDataDir() {
  const dir = mkdtempSync(join(tmpdir(), 'pulsemap-e2e-data-'));
  dataDirs.push(dir);
  return dir;
}

/** A fresh headless chromium with its own profile; `close()` removes the profile. */
export async function startBrowser(contextOptions = {}) {
  const profile = mkdtempSync(join(tmpdir(), 'pulsemap-chromium-'));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: chromiumPath,
    headless: true,
    viewport: { width: 1280, height: 800 },
    ...contextOptions,
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

/** The test servers' keys and secret (test values, not secrets). */
export const FLEET_KEY = 'e2e-fleet-key-0123456789';
export const ADMIN_KEY = 'e2e-admin-key-0123456789';
const SECRET = 'e2e-secret-0123456789-0123456789';
const bearer = (key) => (key ? { authorization: `Bearer ${key}` } : {});

/** POSTs JSON to the server with `key` (default: the admin key, which may do anything); `{ status, body }`. */
export async function postJson(server, path, body, key = ADMIN_KEY) {
  const response = await fetch(`${server.url}${path}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...bearer(key) },
    body: JSON.stringify(body),
  });
  return { status: response.status, body: await response.json() };
}

export async function getJson(server, path, key = ADMIN_KEY) {
  const response = await fetch(`${server.url}${path}`, { headers: bearer(key) });
  return { status: response.status, body: await response.json() };
}

/** A share link for `driverId`, made with the fleet key: the path to open. */
export async function shareLink(server, driverId) {
  const { status, body } = await postJson(server, '/api/shares', { driver_id: driverId }, FLEET_KEY);
  if (status !== 201) throw new Error(`share link: ${status} ${JSON.stringify(body)}`);
  return body.path;
}

/** A metric's value from /metrics (0 when absent). */
export async function metric(server, nameAndLabels) {
  const text = await (await fetch(`${server.url}/metrics`, { headers: bearer(ADMIN_KEY) })).text();
  const line = text.split('\n').find((l) => l.startsWith(`${nameAndLabels} `));
  return line ? Number(line.slice(nameAndLabels.length + 1)) : 0;
}

export const ping = (driverId, lat, lon, ts = Date.now()) => ({ driver_id: driverId, lat, lon, ts, accuracy_m: 8 });

/** Polls `check` until it returns a truthy value, or fails after `ms` with `what`. */
export async function eventually(what, check, ms = 10_000) {
  const deadline = Date.now() + ms;
  let last;
  while (Date.now() < deadline) {
    last = await check();
    if (last) return last;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`timed out waiting for: ${what} (last: ${JSON.stringify(last)})`);
}

/**
 * The highest alpha of the heat canvas in a square of `radius` px around where (lat, lon) is on screen, or -1
 * when the page has no heat canvas yet.
 */
export async function heatAlphaAt(page, lat, lon, radius = 4) {
  return page.evaluate(({ lat, lon, radius }) => {
    const canvas = document.querySelector('canvas.leaflet-heatmap-layer');
    if (!canvas || !window.pulsemapMap) return -1;
    const p = window.pulsemapMap.latLngToContainerPoint([lat, lon]);
    const mapRect = document.querySelector('#map').getBoundingClientRect();
    const canvasRect = canvas.getBoundingClientRect();
    const x = Math.round(p.x + mapRect.left - canvasRect.left);
    const y = Math.round(p.y + mapRect.top - canvasRect.top);
    const size = radius * 2 + 1;
    const data = canvas.getContext('2d').getImageData(x - radius, y - radius, size, size).data;
    let max = 0;
    for (let i = 3; i < data.length; i += 4) max = Math.max(max, data[i]);
    return max;
  }, { lat, lon, radius });
}

/** Hydration is done when the wasm has exposed the map. */
// Holds back the page's sockets whose URL matches `pattern`: nothing passes either way until `release()`, then
// everything does, and `fromServer` collects what the server sent (parsed).
export async function holdSocket(page, pattern) {
  let release;
  const released = new Promise((resolve) => { release = resolve; });
  const fromServer = [];
  await page.routeWebSocket(pattern, (ws) => {
    const waiting = [];
    let upstream;
    ws.onMessage((message) => (upstream ? upstream.send(message) : waiting.push(message)));
    released.then(() => {
      upstream = ws.connectToServer();
      upstream.onMessage((message) => {
        fromServer.push(JSON.parse(message));
        ws.send(message);
      });
      waiting.forEach((message) => upstream.send(message));
    });
  });
  return { release, fromServer };
}

export async function hydrated(page) {
  await page.waitForFunction(() => window.pulsemapMap !== undefined, null, { timeout: 20_000 });
}
