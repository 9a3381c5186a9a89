// The page of `nst serve` in Debian's chromium (headless, playwright-core from hosts/web), for
// tests/test_serve_page.py. Two runs, each writing OUTDIR/result.json:
//   node tests/serve_page.mjs run URL OUTDIR CONTENT_FILE STYLE_FILE BAD_FILE
//     run:     the file inputs, preset scream, size 128 px, 100000 evaluations, submit; watch the preview until it
//              has shown 2 different pictures after the first evaluation (reloading the page after the first of
//              them: it follows the same job again), cancel, download the best picture so far. Records each picture the
//              preview showed (kind, evaluation, size, pixels' SHA-256), the status line, the progress bar, the
//              downloaded PNG's path and name
//     refused: the #error line after submitting BAD_FILE as the photo (the server's problem document)
//     list:    the job list's rows, the download its Show button offers, the list after its Delete button
//     switching: a job submitted while another runs, cancelled while queued; the first watched again from the list
//              and cancelled: both ids, the status line after the first cancel, the watched job's download, the list
//     dropped: the sizes of the two thumbnails after the photo was dropped on the painting's zone (the photo's is
//              the GIF's by then)
//   node tests/serve_page.mjs token URL OUTDIR CONTENT_FILE STYLE_FILE TOKEN   (a server with --token-file)
//     before:    the server line and #error when submitting without the token
//     restarted: the same job (64 px, 100000 evaluations) with TOKEN typed into the token field; "RUNNING" is
//                printed once it runs (the test then restarts the server); the status lines seen until it runs
//                again, then cancelled and its partial picture downloaded
//     after:     a 20-evaluation job run to its end and downloaded
//     auth:      the Authorization header of every /v1 request made after the token was typed
// Both record every URL the browser asked for (pages and workers) and the console's errors.
import fs from 'node:fs';
import path from 'node:path';
import { launch } from '../hosts/web/test/browser.mjs';

const [mode, url, out, contentFile, styleFile, extra] = process.argv.slice(2);
const TIMEOUT = 120000;

async function download(page, file) {
  await page.waitForSelector('#download[aria-disabled="false"]', { timeout: TIMEOUT });
  const [d] = await Promise.all([page.waitForEvent('download'), page.click('#download')]);
  const saved = path.join(out, file);
  await d.saveAs(saved);
  return { path: saved, suggested: d.suggestedFilename(), partial: await page.locator('#download').getAttribute('data-partial') };
}

/** The pictures the preview <img> shows after its `count`th, each as {kind: "preview" or "result", evaluation,
 * size, sha256 of its decoded RGBA pixels} (the page counts its pictures in data-previews), until enough(seen) is
 * true or the download is offered. */
async function watchPreviews(page, enough, count = '0') {
  const seen = [];
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
      return { done, count: img.dataset.previews, kind: img.dataset.kind, evaluation: img.dataset.evaluation,
        size: [canvas.width, canvas.height], sha256: Array.from(digest, (b) => b.toString(16).padStart(2, '0')).join('') };
    }, count);
    if (now.count !== count) {
      count = now.count;
      seen.push({ kind: now.kind, evaluation: now.evaluation, size: now.size, sha256: now.sha256, count });
    }
    if (now.done || enough(seen)) break;
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

async function chooseAndSubmit(page, preset, size, evaluations, photo = contentFile) {
  await page.setInputFiles('#content-file', photo);
  await page.setInputFiles('#style-file', styleFile);
  await page.selectOption('#preset', preset);
  await page.fill('#size', size);
  await page.fill('#iterations', evaluations);
  await page.click('#start');
}

/** The run on a server without tokens (see the top). */
async function run(page, result) {
  const started = Date.now();
  await chooseAndSubmit(page, 'scream', '128', '100000');
  // 2 different pictures after the first evaluation (the workers' first preview is the start: the photo itself)
  const distinct = (seen) => new Set(seen.filter((p) => p.kind === 'preview' && Number(p.evaluation) > 1).map((p) => p.sha256)).size;
  const previews = await watchPreviews(page, (seen) => distinct(seen) >= 1);
  // a reload in the middle: the page follows the same job again (localStorage), its previews go on
  await page.reload();
  await page.waitForFunction(() => document.getElementById('status').textContent.startsWith('Running'), null, { timeout: TIMEOUT });
  const reloaded = await page.evaluate(() => ({ cancel: !document.getElementById('cancel').disabled,
    status: document.getElementById('status').textContent }));
  previews.push(...await watchPreviews(page, (seen) => distinct([...previews, ...seen]) >= 2));
  const seconds = (Date.now() - started) / 1000;
  await page.click('#cancel');
  await page.waitForFunction(() => document.getElementById('status').textContent.startsWith('Cancelled'), null, { timeout: TIMEOUT });
  const shown = previews.length ? previews[previews.length - 1].count : '0';
  previews.push(...await watchPreviews(page, (seen) => seen.some((p) => p.kind === 'result'), shown));
  result.run = { ...(await download(page, 'run.png')), ...(await snapshot(page)), previews, seconds, reloaded };
  await page.screenshot({ path: path.join(out, 'page.png') });

  // a file the server refuses: its one-line problem document on the page (the browser logs the 4xx itself)
  const errorsBefore = result.consoleErrors.length;
  await chooseAndSubmit(page, 'scream', '128', '100', extra); // the reload forgot the files: both again
  await page.waitForFunction(() => document.getElementById('error').textContent !== '', null, { timeout: TIMEOUT });
  result.refused = await snapshot(page);
  result.refusedConsole = result.consoleErrors.splice(errorsBefore);

  // the job list: the cancelled job's row; Show offers its picture again; Delete removes it
  const rows = () => page.evaluate(() => [...document.querySelectorAll('#jobs tbody tr')].map((r) => ({
    id: r.dataset.id, status: r.dataset.status, cells: [...r.cells].map((c) => c.textContent) })));
  await page.evaluate(() => document.getElementById('download').setAttribute('aria-disabled', 'true'));
  result.list = { before: await rows() };
  await page.click('#jobs tbody tr:first-child button:text("Show")');
  result.list.shown = await download(page, 'shown.png');
  await page.click('#jobs tbody tr:first-child button:text("Delete")');
  await page.waitForFunction(() => document.querySelectorAll('#jobs tbody tr').length === 0, null, { timeout: TIMEOUT });
  result.list.after = { rows: await rows(), note: await page.locator('#jobs-note').textContent(),
    status: await page.locator('#status').textContent() };

  // a second submission while a job runs: the page follows the new one (queued behind the first on the one
  // worker), which is cancelled before it starts; Watch in the list follows the first again, which is cancelled
  await chooseAndSubmit(page, 'scream', '128', '100000');
  await page.waitForFunction(() => document.getElementById('progress').value > 0, null, { timeout: TIMEOUT });
  const first = await page.evaluate(() => JSON.parse(localStorage.getItem('nst-serve-job')).id);
  await page.click('#start');
  await page.waitForFunction((id) => JSON.parse(localStorage.getItem('nst-serve-job') || '{}').id !== id, first);
  const second = await page.evaluate(() => JSON.parse(localStorage.getItem('nst-serve-job')).id);
  await page.waitForFunction(() => document.getElementById('status').textContent.startsWith('Queued'), null, { timeout: TIMEOUT });
  await page.click('#cancel');
  await page.waitForFunction(() => document.getElementById('status').textContent.startsWith('Cancelled'), null, { timeout: TIMEOUT });
  const queuedCancel = await snapshot(page);
  await page.waitForFunction((id) => { const b = document.querySelector(`#jobs tr[data-id="${id}"] button`); return b && b.textContent === 'Watch' && !b.disabled; }, first, { timeout: TIMEOUT });
  await page.click(`#jobs tr[data-id="${first}"] button:text("Watch")`);
  await page.waitForFunction(() => document.getElementById('status').textContent.startsWith('Running'), null, { timeout: TIMEOUT });
  await page.click('#cancel');
  await page.waitForFunction(() => document.getElementById('status').textContent.startsWith('Cancelled after'), null, { timeout: TIMEOUT });
  result.switching = { first, second, queuedCancel, watched: await download(page, 'watched.png'), rows: await rows() };

  // drag and drop: the photo dropped on the painting's zone becomes the painting (its thumbnail shows it)
  const dt = await page.evaluateHandle(({ bytes, name }) => {
    const transfer = new DataTransfer();
    transfer.items.add(new File([Uint8Array.from(atob(bytes), (c) => c.charCodeAt(0))], name, { type: 'image/jpeg' }));
    return transfer;
  }, { bytes: fs.readFileSync(contentFile).toString('base64'), name: path.basename(contentFile) });
  await page.dispatchEvent('#style-drop', 'drop', { dataTransfer: dt });
  await page.waitForFunction(() => { const t = document.getElementById('style-thumb'); return t.complete && t.naturalWidth > 0; });
  result.dropped = await page.evaluate(() => {
    const [photo, painting] = ['content-thumb', 'style-thumb'].map((id) => document.getElementById(id));
    return { photo: [photo.naturalWidth, photo.naturalHeight], painting: [painting.naturalWidth, painting.naturalHeight] };
  });
}

/** The run on a server with --token-file (see the top). */
async function withToken(page, result) {
  await page.waitForFunction(() => document.getElementById('server').textContent.includes('token'));
  await chooseAndSubmit(page, 'starry_night', '64', '100000');
  await page.waitForFunction(() => document.getElementById('error').textContent !== '', null, { timeout: TIMEOUT });
  result.before = await snapshot(page);
  result.beforeConsole = result.consoleErrors.splice(0);
  const auth = [];
  page.on('request', (r) => { if (new URL(r.url()).pathname.startsWith('/v1/')) auth.push([r.url(), r.headers().authorization || null]); });
  await page.fill('#token', extra);
  await page.dispatchEvent('#token', 'change');
  await page.waitForFunction(() => document.getElementById('server').textContent.includes('worker'));
  await page.click('#start');

  // the test restarts the server once "RUNNING" is out; the page must follow the job through it
  await page.waitForFunction(() => document.getElementById('progress').value > 0, null, { timeout: TIMEOUT });
  const errorsBefore = result.consoleErrors.length;
  console.log('RUNNING');
  const statuses = [];
  for (const end = Date.now() + TIMEOUT; Date.now() < end;) {
    const status = await page.locator('#status').textContent();
    const kind = status.replace(/[\d.]+/g, 'N');
    if (statuses[statuses.length - 1] !== kind) statuses.push(kind);
    const lost = statuses.some((k) => k.startsWith('The server does not answer'));
    if (lost && kind.startsWith('Running')) break; // running again after the restart
    await page.waitForTimeout(100);
  }
  await page.click('#cancel');
  await page.waitForFunction(() => document.getElementById('status').textContent.startsWith('Cancelled'), null, { timeout: TIMEOUT });
  result.restarted = { ...(await download(page, 'restarted.png')), ...(await snapshot(page)), statuses };
  result.restartConsole = result.consoleErrors.splice(errorsBefore);

  // a short job to its end
  await page.fill('#iterations', '20');
  await page.click('#start');
  await page.waitForFunction(() => document.getElementById('status').textContent.startsWith('Done'), null, { timeout: TIMEOUT });
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
