// Debian's chromium driven by playwright-core: headless, the flags a root container needs, a fresh profile.
// Nothing here downloads a browser: playwright-core has no browser of its own, and executablePath is the system's.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { chromium } from 'playwright-core';

export const CHROMIUM = process.env.NST_CHROMIUM || '/usr/bin/chromium';
export const FLAGS = ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update',
  '--no-first-run', '--disable-sync'];

/** A persistent context on a new, empty --user-data-dir (removed by close()). Returns {context, close}. */
export async function launch({ userDataDir = null } = {}) {
  const dir = userDataDir || fs.mkdtempSync(path.join(os.tmpdir(), 'nst-chromium-'));
  const context = await chromium.launchPersistentContext(dir, {
    executablePath: CHROMIUM, headless: true, args: FLAGS, acceptDownloads: true,
    viewport: { width: 1000, height: 900 },
  });
  return {
    context,
    async close() {
      await context.close();
      if (!userDataDir) fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** Open `url` in a new page, collect its console errors, and wait for window.nst.ready (resolved or rejected). */
export async function openPage(context, url, { initScript = null } = {}) {
  const page = await context.newPage();
  const consoleErrors = [];
  const foreign = []; // requests that leave the page's origin (there must be none: no CDN)
  const origin = new URL(url).origin;
  page.on('request', (r) => { if (/^https?:/.test(r.url()) && new URL(r.url()).origin !== origin) foreign.push(r.url()); });
  page.on('console', (m) => { if (m.type() === 'error') consoleErrors.push(m.text()); });
  page.on('pageerror', (e) => consoleErrors.push(String(e)));
  if (initScript) await page.addInitScript(initScript);
  await page.goto(url);
  await page.waitForFunction(() => window.nst !== undefined);
  const ready = await page.evaluate(() => window.nst.ready.then((r) => ({ ok: true, presets: r.presets }), (e) => ({ ok: false, error: e.message })));
  return { page, ready, consoleErrors, foreign };
}
