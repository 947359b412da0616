// Headless Chromium for the dashboard's test: taken from the SDK's
// clients/js/test/lib/browser.mjs (itself from the end-to-end suite's
// tests/e2e/lib/browser.mjs), trimmed to the launcher; the page is served by
// ../../serve.mjs. playwright-core is this package's devDependency, pinned to
// the version clients/js and tests/e2e use.

import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { chromium } from "playwright-core";
import { withTimeout } from "./harness.mjs";

export const CHROMIUM = process.env.TIDINGS_CHROMIUM ?? "/usr/bin/chromium";

/** Launches Debian's Chromium headless (no browser download works here). */
export async function launchChromium() {
  assert.ok(existsSync(CHROMIUM),
    `Chromium not found at ${CHROMIUM}: install it (apt-get install chromium) or set TIDINGS_CHROMIUM`);
  return withTimeout(chromium.launch({
    executablePath: CHROMIUM,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
    timeout: 30000,
  }), 35000, "launching Chromium");
}
