// bench/bench_web.py's browser side: one headless chromium (hosts/web/test/browser.mjs) on the page at URL, kept
// open; each line on stdin is the JSON options of one window.nst.run ({content, style, size, iterations, threads}),
// answered by one line on stdout: {history, threads, width, height} (the PNG left out) or {error}.
// node bench/web_driver.mjs URL
import readline from 'node:readline';
import { launch, openPage } from '../hosts/web/test/browser.mjs';

const url = process.argv[2];
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
      const r = await page.evaluate((o) => window.nst.run(o).then(({ png, ...rest }) => rest), JSON.parse(line));
      console.log(JSON.stringify(r));
    } catch (e) {
      console.log(JSON.stringify({ error: String(e.message || e).split('\n')[0] }));
    }
  }
} finally {
  await browser.close();
}
