// The page of `nst serve` in Debian's chromium (headless, playwright-core from hosts/web), for
// tests/test_serve_page.py. Two runs, each writing OUTDIR/result.json:
//   node tests/serve_page.mjs run URL OUTDIR CONTENT_FILE STYLE_FILE BAD_FILE
//     run:     the file inputs, preset scream, size 128, 500 evaluations, submit; the pictures the preview showed
//              (their evaluation and pixels' SHA-256), the status line, the progress bar, the downloaded PNG's path
//     cancel:  a second job of 100000 evaluations, cancelled once its progress shows; the partial PNG's path
//     refused: the #error line after submitting BAD_FILE as the photo (the server's problem document)
//   node tests/serve_page.mjs token URL OUTDIR CONTENT_FILE STYLE_FILE TOKEN   (a server with --token-file)
//     before:  the server line and #error when submitting without the token; after: the same job with TOKEN typed
//              into the token field (64 px, 20 evaluations), downloaded; auth: the Authorization header of every
//              /v1 request made after the token was typed
// Both record every URL the browser asked for (pages and workers) and the console's errors.
import fs from 'node:fs';
import path from 'node:path';
import { launch } from '../hosts/web/test/browser.mjs';

const [mode, url, out, contentFile, styleFile, extra] = process.argv.slice(2);
const SIZE = process.env.NST_PAGE_SIZE || '128';
const EVALUATIONS = process.env.NST_PAGE_EVALUATIONS || '500';
const TIMEOUT = 120000;

async function download(page, file) {
  await page.waitForSelector('#download[aria-disabled="false"]', { timeout: TIMEOUT });
  const [d] = await Promise.all([page.waitForEvent('download'), page.click('#download')]);
  const saved = path.join(out, file);
  await d.saveAs(saved);
  return { path: saved, suggested: d.suggestedFilename() };
}

/** Until the download is offered: each picture the preview <img> showed, as {kind: "preview" or "result",
 * evaluation, size, sha256 of its decoded RGBA pixels} (the page counts its pictures in data-previews). */
async function watchPreviews(page) {
  const seen = [];
  let count = '0';
  for (const end = Date.now() + TIMEOUT; Date.now() < end;) {
    const now = await page.evaluate(async (last) => {
      const img = document.getElementById('preview');
      const done = document.getElementById('download').getAttribute('aria-disabled') === 'false';
      if ((img.dataset.previews || '0') === last || !img.complete || !img.naturalWidth) return { done, count: last };
      const canvas = new OffscreenCanvas(img.naturalWidth, img.naturalHeight);
      const ctx = canvas.getContext('2d');
      ctx.drawImage(img, 0, 0);
      const pixels = ctx.getImageData(0, 0, canvas.width, canvas.height).data;
      const digest = new Uint8Array(await crypto.subtle.digest('SHA-256', pixels));
      return { done, count: img.dataset.previews, kind: img.dataset.kind, evaluation: img.dataset.evaluation, size: [canvas.width, canvas.height],
        sha256: Array.from(digest, (b) => b.toString(16).padStart(2, '0')).join('') };
    }, count);
    if (now.count !== count) {
      count = now.count;
      seen.push({ kind: now.kind, evaluation: now.evaluation, size: now.size, sha256: now.sha256 });
    }
    if (now.done) break;
    await page.waitForTimeout(100);
  }
  return seen;
}

async function snapshot(page) {
  return page.evaluate(() => ({
    status: document.getElementById('status').textContent,
    error: document.getElementById('error').textContent,
    progress: [document.getElementById('progress').value, document.getElementById('progress').max],
    server: document.getElementById('server').textContent,
  }));
}

async function chooseAndSubmit(page, preset, size, evaluations) {
  await page.setInputFiles('#content-file', contentFile);
  await page.setInputFiles('#style-file', styleFile);
  await page.selectOption('#preset', preset);
  await page.fill('#size', size);
  await page.fill('#iterations', evaluations);
  await page.click('#start');
}

/** The run on a server without tokens (see the top). */
async function run(page, result) {
  // one job, start to finish, through the page's controls
  const started = Date.now();
  await chooseAndSubmit(page, 'scream', SIZE, EVALUATIONS);
  const previews = await watchPreviews(page);
  const seconds = (Date.now() - started) / 1000;
  const run = await download(page, 'run.png');
  Object.assign(run, await snapshot(page), { previews, seconds });
  result.run = run;

  // a long job, cancelled as soon as it runs: the download is its best picture so far
  await page.fill('#iterations', '100000');
  await page.click('#start');
  await page.waitForFunction(() => document.getElementById('progress').value > 0, null, { timeout: TIMEOUT });
  await page.click('#cancel');
  await page.waitForFunction(() => document.getElementById('status').textContent.startsWith('Cancelled'), null, { timeout: TIMEOUT });
  result.cancel = { ...(await download(page, 'cancelled.png')), ...(await snapshot(page)),
    partial: await page.locator('#download').getAttribute('data-partial') };
  await page.screenshot({ path: path.join(out, 'page.png') });

  // a file the server refuses: its one-line problem document on the page (the browser logs the 4xx itself)
  const errorsBefore = result.consoleErrors.length;
  await page.setInputFiles('#content-file', extra);
  await page.click('#start');
  await page.waitForFunction(() => document.getElementById('error').textContent !== '', null, { timeout: TIMEOUT });
  result.refused = await snapshot(page);
  result.refusedConsole = result.consoleErrors.splice(errorsBefore);
}

/** The run on a server with --token-file (see the top). */
async function withToken(page, result) {
  await page.waitForFunction(() => document.getElementById('server').textContent.includes('token'));
  await chooseAndSubmit(page, 'starry_night', '64', '20');
  await page.waitForFunction(() => document.getElementById('error').textContent !== '', null, { timeout: TIMEOUT });
  result.before = await snapshot(page);
  result.beforeConsole = result.consoleErrors.splice(0);
  const auth = [];
  page.on('request', (r) => { if (new URL(r.url()).pathname.startsWith('/v1/')) auth.push([r.url(), r.headers().authorization || null]); });
  await page.fill('#token', extra);
  await page.dispatchEvent('#token', 'change');
  await page.waitForFunction(() => document.getElementById('server').textContent.includes('worker'));
  await page.click('#start');
  result.after = { ...(await download(page, 'token.png')), ...(await snapshot(page)) };
  result.auth = auth;
}

const result = { requests: [], consoleErrors: [] };
const browser = await launch();
try {
  const { context } = browser;
  context.on('request', (r) => result.requests.push(r.url()));
  const page = await context.newPage();
  page.on('console', (m) => { if (m.type() === 'error') result.consoleErrors.push(m.text()); });
  page.on('pageerror', (e) => result.consoleErrors.push(String(e)));
  await page.goto(url);
  await page.waitForFunction(() => document.getElementById('server').textContent !== '');
  if (mode === 'run') await run(page, result);
  else if (mode === 'token') await withToken(page, result);
  else throw new Error(`unknown mode ${mode} (run or token)`);
} finally {
  await browser.close();
  fs.writeFileSync(path.join(out, 'result.json'), JSON.stringify(result, null, 1));
}
