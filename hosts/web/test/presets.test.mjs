// node --test test/presets.test.mjs: the page's preset menu on hand-made manifests (tests/test_web_host.py runs it).
import assert from 'node:assert/strict';
import test from 'node:test';
import { presetChoices } from '../presets.mjs';

const w = (term, layer, input, value) => ({ term, layer, input, value });
const manifest = {
  problem: { preset: 'starry_night', style_scale: 100, size: 192, style_size: 192 },
  weights: [w('content', 3, 'content_weight', 0.06), w('style', 1, 'sw1', 3e7), w('style', 4, 'sw4', 1e5),
    w('style', 6, 'sw6', 1500), w('style', 7, 'sw7', 300), w('tv', null, 'tv_weight', 0.02)],
};
const table = {
  starry_night: { image_size: 192, style_size: 192, content_layer: 3, content_weight: 1, style_layers: [1], style_weights: [1], tv_weight: 1 },
  scream: { image_size: 192, style_size: 224, content_layer: 3, content_weight: 3e-2, style_layers: [1, 4, 6, 7], style_weights: [200000, 800, 12, 1], tv_weight: 2e-2 },
  fewer: { image_size: 160, style_size: 200, content_layer: 3, content_weight: 1, style_layers: [4, 7], style_weights: [2, 3], tv_weight: 0.5 },
  other_content: { image_size: 192, style_size: 192, content_layer: 2, content_weight: 1, style_layers: [1], style_weights: [1], tv_weight: 0 },
  extra_style: { image_size: 192, style_size: 192, content_layer: 3, content_weight: 1, style_layers: [1, 9], style_weights: [1, 1], tv_weight: 0 },
};

test('the bundle\'s own preset keeps the manifest\'s exact weights, not the table\'s', () => {
  const c = presetChoices(manifest, table).starry_night;
  assert.deepEqual(c.weights, { content_weight: 0.06, sw1: 3e7, sw4: 1e5, sw6: 1500, sw7: 300, tv_weight: 0.02 });
  assert.equal(c.fits, true);
  assert.equal(c.styleSize, 192);
});

test('a preset on the same layers: style weights times the bundle\'s style scale, its own style size', () => {
  const c = presetChoices(manifest, table).scream;
  assert.equal(c.fits, true);
  assert.deepEqual(c.weights, { content_weight: 3e-2, sw1: 2e7, sw4: 8e4, sw6: 1200, sw7: 100, tv_weight: 2e-2 });
  assert.equal(c.styleSize, 224);
});

test('a preset with fewer style layers fits; the bundle\'s other style layers get weight 0', () => {
  const c = presetChoices(manifest, table).fewer;
  assert.equal(c.fits, true);
  assert.deepEqual(c.weights, { content_weight: 1, sw1: 0, sw4: 200, sw6: 0, sw7: 300, tv_weight: 0.5 });
  assert.equal(c.size, 160);
});

test('another content layer or a style layer outside the bundle does not fit, with the reason', () => {
  const choices = presetChoices(manifest, table);
  assert.equal(choices.other_content.fits, false);
  assert.match(choices.other_content.why, /content layer 2, the bundle's is 3/);
  assert.equal(choices.extra_style.fits, false);
  assert.match(choices.extra_style.why, /style layer\(s\) 9 not in the bundle/);
});

test('without a preset table only the bundle\'s own preset is offered', () => {
  assert.deepEqual(Object.keys(presetChoices(manifest, null)), ['starry_night']);
});
