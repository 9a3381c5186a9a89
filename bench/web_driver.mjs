// bench/bench_web.py's browser side: one headless chromium (hosts/web/test/browser.mjs) on the page at URL, kept
// open; each line on stdin is the JSON options of one window.nst.run ({content, style, size, iterations, threads}),
// answered by one line on stdout: {history, threads, width, height} (the PNG left out) or {error}. A line
// {decode: URL} is answered with the image as the page decodes it: {width, height, rgb (base64 RGB bytes)}.
// node bench/web_driver.mjs URL
import readline from 'node:readline';
import { launch, openPage } from '../hosts/web/test/browser.mjs';

const url = process.argv[2];

// The worker's decoding (createImageBitmap without colour conversion, drawn on a canvas), run in the page.
async function decodeInPage(u) {
  const blob = await (await fetch(u)).blob();
  const bitmap = await createImageBitmap(blob, { colorSpaceConversion: 'none', premultiplyAlpha: 'none', imageOrientation: 'from-image' });
  const canvas = new OffscreenCanvas(bitmap.width, bitmap.height);
  const ctx = canvas.getContext('2d', { willReadFrequently: true });
  ctx.drawImage(bitmap, 0, 0);
  const rgba = ctx.getImageData(0, 0, bitmap.width, bitmap.height).data;
  let text = '';
  for (let i = 0; i < rgba.length; i += 4) text += String.fromCharCode(rgba[i], rgba[i + 1], rgba[i + 2]);
  return { width: bitmap.width, height: bitmap.height, rgb: btoa(text) };
}
const browser = await launch();
try {
  const { page, ready } = await openPage(browser.context, url);
  if (!ready.ok) throw new Error(ready.error);
  const info = await page.evaluate(() => ({ crossOriginIsolated: self.crossOriginIsolated,
    hardwareConcurrency: navigator.hardwareConcurrency, userAgent: navigator.userAgent }));
  console.log(JSON.stringify({ ready: true, ...info }));
  for await (const line of readline.createInterface({ input: process.stdin })) {
    if (!line.trim()) continue;
    try {
      const o = JSON.parse(line);
      if (o.decode) { // {decode: URL}: the image as the page decodes it, {width, height, rgb: base64 RGB bytes}
        console.log(JSON.stringify(await page.evaluate(decodeInPage, o.decode)));
        continue;
      }
      const r = await page.evaluate((opts) => window.nst.run(opts).then(({ png, ...rest }) => rest), o);
      console.log(JSON.stringify(r));
    } catch (e) {
      console.log(JSON.stringify({ error: String(e.message || e).split('\n')[0] }));
    }
  }
} finally {
  await browser.close();
}
