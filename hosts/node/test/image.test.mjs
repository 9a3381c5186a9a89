// Image decoding, Pillow's bilinear resize and the manifest's normalisation, on hand-computed cases.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import test from 'node:test';
import pngjs from 'pngjs';
import { HostError } from '../lib/errors.mjs';
import { deprocess, preprocess, readImage, resizeBilinear, resizedSize, roundHalfEven, writePng } from '../lib/image.mjs';

const PREP = { mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225] };
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'nst-node-image-'));
test.after(() => fs.rmSync(tmp, { recursive: true, force: true }));

test('smaller edge to size, the other truncated', () => {
  assert.deepEqual(resizedSize(640, 480, 192), [256, 192]);
  assert.deepEqual(resizedSize(480, 640, 192), [192, 256]);
  assert.deepEqual(resizedSize(1000, 751, 128), [170, 128]); // 128 * 1000 / 751 = 170.4
  assert.deepEqual(resizedSize(50, 50, 7), [7, 7]);
});

test('bilinear 2 -> 1 averages with the filter widened by the scale, rounding half up', () => {
  // support 2: both pixels weigh 0.75 before normalisation, 0.5 after; (10 + 21) / 2 = 15.5 -> 16
  const out = resizeBilinear(Uint8Array.of(10, 0, 255, 21, 1, 255), 2, 1, 1, 1);
  assert.deepEqual(Array.from(out), [16, 1, 255]);
});

test('bilinear 1 -> 2 copies a single pixel, and equal sizes copy the image', () => {
  assert.deepEqual(Array.from(resizeBilinear(Uint8Array.of(7, 8, 9), 1, 1, 2, 1)), [7, 8, 9, 7, 8, 9]);
  const img = Uint8Array.from({ length: 4 * 3 * 3 }, (_, i) => (i * 37) % 256);
  assert.deepEqual(Array.from(resizeBilinear(img, 4, 3, 4, 3)), Array.from(img));
});

test('normalisation is float32 (v / 255 - mean) / std, NCHW; deprocess inverts it', () => {
  const f = Math.fround;
  const rgb = Uint8Array.of(255, 0, 128, 3, 4, 5); // 2 x 1 image
  const x = preprocess({ width: 2, height: 1, rgb }, null, PREP);
  assert.deepEqual(x.dims, [1, 3, 1, 2]);
  assert.equal(x.data[0], f(f(1 - f(0.485)) / f(0.229)));          // R of pixel 0
  assert.equal(x.data[2], f(f(0 - f(0.456)) / f(0.224)));          // G of pixel 0 (plane 1)
  assert.equal(x.data[5], f(f(f(5 / 255) - f(0.406)) / f(0.225))); // B of pixel 1
  assert.deepEqual(Array.from(deprocess(x.data, 1, 2, PREP)), Array.from(rgb));
});

test('rounding is half to even, like NumPy rint', () => {
  assert.deepEqual([0.5, 1.5, 2.5, -0.5, 2.4, 2.6].map(roundHalfEven), [0, 2, 2, -0, 2, 3]);
});

test('PNG round trip; alpha is composited over white', () => {
  const file = path.join(tmp, 'a.png');
  const rgb = Uint8Array.from({ length: 5 * 3 * 3 }, (_, i) => (i * 11) % 256);
  writePng(file, rgb, 5, 3);
  const back = readImage(file);
  assert.deepEqual([back.width, back.height], [5, 3]);
  assert.deepEqual(Array.from(back.rgb), Array.from(rgb));
  const png = new pngjs.PNG({ width: 2, height: 1 });
  png.data = Buffer.from([10, 20, 30, 0, 10, 20, 30, 255]);
  fs.writeFileSync(path.join(tmp, 'alpha.png'), pngjs.PNG.sync.write(png));
  assert.deepEqual(Array.from(readImage(path.join(tmp, 'alpha.png')).rgb), [255, 255, 255, 10, 20, 30]);
});

test('unreadable images are HostErrors naming the file', () => {
  assert.throws(() => readImage(path.join(tmp, 'missing.png')), (e) => e instanceof HostError && /missing\.png: no such file/.test(e.message));
  fs.writeFileSync(path.join(tmp, 'junk.png'), 'not an image');
  assert.throws(() => readImage(path.join(tmp, 'junk.png')), (e) => e instanceof HostError && /cannot decode/.test(e.message));
  fs.writeFileSync(path.join(tmp, 'cut.png'), fs.readFileSync(path.join(tmp, 'a.png')).subarray(0, 40));
  assert.throws(() => readImage(path.join(tmp, 'cut.png')), HostError);
});
