// A screenshot of the page after one whole run through its UI, for the README:
//   node hosts/web/test/screenshot.mjs URL CONTENT_FILE STYLE_FILE OUT.png [SIZE] [EVALUATIONS]
import { launch, openPage } from './browser.mjs';

const [url, contentFile, styleFile, out, size = '256', evaluations = '200'] = process.argv.slice(2);
const browser = await launch();
try {
  const { page, ready } = await openPage(browser.context, url);
  if (!ready.ok) throw new Error(ready.error);
  await page.setViewportSize({ width: 1000, height: 820 });
  await page.setInputFiles('#content-file', contentFile);
  await page.setInputFiles('#style-file', styleFile);
  await page.fill('#size', size);
  await page.fill('#iterations', evaluations);
  await page.click('#start');
  await page.waitForSelector('#download[aria-disabled="false"]', { timeout: 600000 });
  await page.screenshot({ path: out });
  console.log(`${out}: ${await page.locator('#status').textContent()}`);
} finally {
  await browser.close();
}
