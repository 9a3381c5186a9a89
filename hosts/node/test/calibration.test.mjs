// The size calibration (lib/calibration.mjs) against hand-computed cases of nst's rule
// (nst_core.schedule.calibration, nst_core.inputs.images.resized_shape).
import assert from 'node:assert/strict';
import test from 'node:test';
import { calibrate, calibratedWeights, followingStyleSize, resizedShape, sizeFactor } from '../lib/calibration.mjs';

test('resizedShape: smaller edge to size, the other truncated', () => {
  assert.deepEqual(resizedShape(640, 480, 192), [192, 256]);          // 192 * 640 / 480 = 256 exactly
  assert.deepEqual(resizedShape(480, 640, 128), [170, 128]);          // 128 * 640 / 480 = 170.67 -> 170
  assert.deepEqual(resizedShape(700, 333, 100), [100, 210]);          // 70000 / 333 = 210.21 -> 210
  assert.deepEqual(resizedShape(700, 333, 192), [192, 403]);          // 134400 / 333 = 403.60 -> 403, not 404
  assert.deepEqual(resizedShape(50, 50, 64), [64, 64]);
});

test('sizeFactor: pixels at the calibration size over pixels at the size', () => {
  assert.equal(sizeFactor(640, 480, 128, 192), (192 * 256) / (128 * 170)); // 49152 / 21760 = 2.2588..
  assert.equal(sizeFactor(640, 480, 128, 192), 49152 / 21760);
  // odd aspect ratio: the truncation shows (192 * 403) / (100 * 210) = 3.68457.., not (192 / 100)^2 = 3.6864
  assert.equal(sizeFactor(700, 333, 100, 192), 77376 / 21000);
  assert.notEqual(sizeFactor(700, 333, 100, 192), 1.92 * 1.92);
  assert.equal(sizeFactor(700, 333, 192, 192), 1);
  assert.equal(sizeFactor(700, 333, 100, 0), 1);                      // 0: the raw sums
  assert.equal(sizeFactor(1024, 768, 384, 192), (192 * 256) / (384 * 512)); // 0.25
});

test('followingStyleSize: round half to even, capped when it enlarges', () => {
  assert.equal(followingStyleSize(192, 128, 192), 128);
  assert.equal(followingStyleSize(224, 128, 192), 149);               // 149.33
  assert.equal(followingStyleSize(201, 96, 192), 100);                // 100.5 -> 100 (Python's round)
  assert.equal(followingStyleSize(203, 96, 192), 102);                // 101.5 -> 102
  assert.equal(followingStyleSize(224, 192, 192), 224);               // at the calibration size: unchanged
  assert.equal(followingStyleSize(224, 128, 0), 224);                 // no calibration: unchanged
  assert.equal(followingStyleSize(192, 384, 192, 300), 300);          // 384 capped by the file's 300 px edge
  assert.equal(followingStyleSize(192, 384, 192, 100), 192);          // never below the preset's own value
  assert.equal(followingStyleSize(192, 384, 192, 1000), 384);
  assert.equal(followingStyleSize(192, 1024, 192, 1014, 512), 512);   // the manifest's style_size_limit
  assert.equal(followingStyleSize(192, 1024, 192, 400, 512), 400);    // a file smaller than the limit
  assert.equal(followingStyleSize(192, 1024, 192, undefined, 512), 512);
  assert.equal(followingStyleSize(600, 1024, 192, 2000, 512), 600);   // never below the preset's own value
  assert.equal(followingStyleSize(192, 1024, 192, 1014), 1014);       // a bundle from before the limit
});

const manifest = {
  weights: [{ term: 'content', input: 'content_weight', value: 0.06 },
    { term: 'style', input: 'style_weight.a', value: 300 }, { term: 'tv', input: 'tv_weight', value: 0.02 }],
  calibration: { size: 192, style_size_follows_size: true },
};

test('calibratedWeights: content and tv times k, style untouched', () => {
  const w = calibratedWeights(manifest, { content_weight: 0.06, 'style_weight.a': 300, tv_weight: 0.02 }, 2.5);
  assert.deepEqual(w, { content_weight: 0.06 * 2.5, 'style_weight.a': 300, tv_weight: 0.02 * 2.5 });
});

test('calibrate: the manifest default, an override, an explicit style size and an old manifest', () => {
  const content = { width: 700, height: 333 };
  const k = 77376 / 21000;
  const a = calibrate(manifest, content, 500, { size: 100, styleSize: 192 });
  assert.equal(a.k, k);
  assert.equal(a.styleSize, 100);
  assert.equal(a.weights.content_weight, 0.06 * k);
  assert.equal(a.weights.tv_weight, 0.02 * k);
  assert.equal(a.weights['style_weight.a'], 300);
  const raw = calibrate(manifest, content, 500, { size: 100, styleSize: 192, calibrationSize: 0 });
  assert.equal(raw.k, 1);
  assert.equal(raw.styleSize, 192);
  assert.equal(raw.weights.content_weight, 0.06);
  assert.equal(calibrate(manifest, content, 500, { size: 100, styleSize: 150, styleSizeGiven: true }).styleSize, 150);
  const old = calibrate({ weights: manifest.weights }, content, 500, { size: 100, styleSize: 192 });
  assert.equal(old.k, 1);
  assert.equal(old.styleSize, 192);
});
