// A screenshot of the page of `nst serve` in the middle of a job, for the README (docs/make_serve_picture.sh):
//   node docs/serve_screenshot.mjs URL CONTENT_FILE STYLE_FILE OUT.png [SIZE] [EVALUATIONS] [SHARE]
// Chooses both files through the page's inputs, submits, waits until the progress bar has passed SHARE (0..1) of
// the budget and a preview is shown, takes the screenshot, then cancels the job from the page.
import { launch } from '../hosts/web/test/browser.mjs';

const [url, contentFile, styleFile, out, size = '256', evaluations = '300', share = '0.5'] = process.argv.slice(2);
const browser = await launch();
try {
  const page = await browser.context.newPage();
  await page.setViewportSize({ width: 1000, height: 960 });
  await page.goto(url);
  await page.waitForFunction(() => document.getElementById('server').textContent !== '');
  await page.setInputFiles('#content-file', contentFile);
  await page.setInputFiles('#style-file', styleFile);
  await page.fill('#size', size);
  await page.fill('#iterations', evaluations);
  await page.click('#start');
  await page.waitForFunction((s) => {
    const bar = document.getElementById('progress');
    const img = document.getElementById('preview');
    return bar.value >= s * bar.max && bar.max > 1 && !img.hidden && img.complete && img.naturalWidth > 0;
  }, Number(share), { timeout: 600000 });
  await page.screenshot({ path: out });
  console.log(`${out}: ${await page.locator('#status').textContent()}`);
  await page.click('#cancel');
  await page.waitForFunction(() => document.getElementById('status').textContent.startsWith('Cancelled'), null, { timeout: 120000 });
} finally {
  await browser.close();
}
