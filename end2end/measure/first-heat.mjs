// Time to the homepage's first heat frame in headless chromium: N fresh browser profiles (nothing cached) load `/`
// of a server running the built-in demo fleet; each reports `performance.now()` at the moment its heat layer first
// drew cells (`window.pulsemapFirstHeatMs`, set by the page). Prints each load, the median and the worst, as JSON,
// and the medians of the steps before it: the document's first byte and last byte, the document parsed
// (DOMContentLoaded ended) and the wasm downloaded.
// Not a test (no timing is asserted anywhere): a measurement, run on a release build.
//
//   PULSEMAP_BIN=$CARGO_TARGET_DIR/release/pulsemap node end2end/measure/first-heat.mjs [loads=10]

import { hydrated, openPage, startBrowser, startServer } from '../harness.mjs';

const loads = Number(process.argv[2] ?? 10);
const server = await startServer(['--demo']);
const times = [];
const steps = { first_byte_ms: [], document_ms: [], parsed_ms: [], wasm_downloaded_ms: [] };
try {
  // One load first, not counted: the demo fleet fills the map and the server's files are read once.
  for (let i = 0; i <= loads; i++) {
    const browser = await startBrowser();
    try {
      const { page } = await openPage(browser, server);
      await page.goto(server.url);
      await hydrated(page);
      const ms = await page.waitForFunction(() => window.pulsemapFirstHeatMs, null, { timeout: 20_000 });
      if (i > 0) {
        times.push(await ms.jsonValue());
        const step = await page.evaluate(() => ({
          first_byte_ms: performance.getEntriesByType('navigation')[0].responseStart,
          document_ms: performance.getEntriesByType('navigation')[0].responseEnd,
          parsed_ms: performance.getEntriesByType('navigation')[0].domContentLoadedEventEnd,
          wasm_downloaded_ms: performance.getEntriesByType('resource').find((r) => r.name.endsWith('.wasm'))?.responseEnd,
        }));
        for (const [k, v] of Object.entries(step)) if (v !== undefined) steps[k].push(v);
      }
    } finally {
      await browser.close();
    }
  }
} finally {
  await server.stop();
}
const medianOf = (values) => {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted.length % 2 ? sorted[(sorted.length - 1) / 2] : (sorted[sorted.length / 2 - 1] + sorted[sorted.length / 2]) / 2;
};
const before = Object.fromEntries(Object.entries(steps).filter(([, v]) => v.length).map(([k, v]) => [k, Math.round(medianOf(v))]));
console.log(JSON.stringify({
  loads: times.map((t) => Math.round(t)),
  median_ms: Math.round(medianOf(times)),
  worst_ms: Math.round(Math.max(...times)),
  median_steps: before,
}));
