// The browser end-to-end run that tests/test_web_host.py checks: node e2e.mjs URL OUTDIR CONTENT_URL STYLE_URL
// CONTENT_FILE STYLE_FILE. Writes OUTDIR/result.json with
//   run: window.nst.run's history, threads, size (20 evaluations at 128 px, 2 threads; the PNG saved as run.png)
//   ui: the clicked-through run (file inputs, start, the preview's evaluations seen, stop, download): the downloaded
//       file's path, the status line, the screenshot's path
//   scream: one evaluation with the scream preset's weights on the same (starry_night) bundle
//   errors: the one-line #error text for an unreadable image, a bundle that does not load, no WebAssembly SIMD
import fs from 'node:fs';
import path from 'node:path';
import { launch, openPage } from './browser.mjs';

const [url, out, contentUrl, styleUrl, contentFile, styleFile] = process.argv.slice(2);
const ITERATIONS = Number(process.env.NST_E2E_ITERATIONS || 20);
const SIZE = 128;

async function errorText(page) {
  await page.waitForFunction(() => document.getElementById('error').textContent !== '');
  return page.locator('#error').textContent();
}

const result = { errors: {} };
const browser = await launch();
try {
  const { context } = browser;
  const { page, ready, consoleErrors, foreign } = await openPage(context, url);
  if (!ready.ok) throw new Error(`the page did not get ready: ${ready.error}`);
  result.presets = ready.presets;
  result.crossOriginIsolated = await page.evaluate(() => self.crossOriginIsolated);
  const run = await page.evaluate((o) => window.nst.run(o), { content: contentUrl, style: styleUrl, size: SIZE, iterations: ITERATIONS, threads: 2 });
  fs.writeFileSync(path.join(out, 'run.png'), Buffer.from(run.png.split(',')[1], 'base64'));
  result.run = { ...run, png: path.join(out, 'run.png') };

  // another preset on the same bundle: its weights fed as the objective's inputs (one evaluation)
  const scream = await page.evaluate((o) => window.nst.run(o), { content: contentUrl, style: styleUrl, preset: 'scream', size: SIZE, iterations: 1, threads: 1 });
  result.scream = { history: scream.history, styleSize: scream.styleSize, k: scream.k };

  // the real UI, once: file inputs, size, evaluations, start; watch the preview change; stop; download
  await page.setInputFiles('#content-file', contentFile);
  await page.setInputFiles('#style-file', styleFile);
  await page.fill('#size', String(SIZE));
  await page.fill('#iterations', '500');
  await page.click('#start');
  const previews = new Set();
  for (let i = 0; i < 600 && previews.size < 3; i++) {
    const e = await page.locator('#preview').getAttribute('data-evaluation');
    if (e) previews.add(e);
    await page.waitForTimeout(50);
  }
  await page.click('#stop');
  await page.waitForSelector('#download[aria-disabled="false"]', { timeout: 60000 });
  const [download] = await Promise.all([page.waitForEvent('download'), page.click('#download')]);
  const saved = path.join(out, 'download.png');
  await download.saveAs(saved);
  result.ui = { download: saved, status: await page.locator('#status').textContent(), previews: [...previews],
    progress: await page.evaluate(() => [document.getElementById('progress').value, document.getElementById('progress').max]),
    screenshot: path.join(out, 'screenshot.png') };
  await page.screenshot({ path: result.ui.screenshot, fullPage: true });

  // drag and drop: the photo dropped on the painting's zone becomes the painting (its thumbnail shows it)
  const dt = await page.evaluateHandle(async (u) => {
    const blob = await (await fetch(u)).blob();
    const transfer = new DataTransfer();
    transfer.items.add(new File([blob], 'dropped.png', { type: blob.type }));
    return transfer;
  }, contentUrl);
  await page.dispatchEvent('#style-drop', 'drop', { dataTransfer: dt });
  await page.waitForFunction(() => document.getElementById('style-thumb').complete
    && document.getElementById('style-thumb').naturalWidth > 0 && document.getElementById('style-thumb').src.startsWith('blob:'));
  result.ui.dropped = await page.evaluate(async (u) => {
    const thumb = document.getElementById('style-thumb');
    const bitmap = await createImageBitmap(await (await fetch(u)).blob());
    return { thumb: [thumb.naturalWidth, thumb.naturalHeight], photo: [bitmap.width, bitmap.height] };
  }, contentUrl);

  // an unreadable image: the bundle's manifest as the photo
  await page.evaluate((o) => window.nst.run(o).catch(() => {}), { content: url + 'bundle/manifest.json', style: styleUrl, size: SIZE, iterations: 2 });
  result.errors.unreadable = await errorText(page);
  result.consoleErrors = consoleErrors;
  result.foreignRequests = foreign;

  // a bundle that does not load
  const missing = await openPage(context, url + '?bundle=no-such-bundle/');
  result.errors.bundle = await errorText(missing.page);
  result.errors.bundleReady = missing.ready;

  // a browser without WebAssembly SIMD (simulated: WebAssembly.validate says no to every module)
  const nosimd = await openPage(context, url, { initScript: () => { WebAssembly.validate = () => false; } });
  result.errors.simd = await errorText(nosimd.page);
} finally {
  await browser.close();
}
fs.writeFileSync(path.join(out, 'result.json'), JSON.stringify(result, null, 1));
console.log(`wrote ${path.join(out, 'result.json')}`);
