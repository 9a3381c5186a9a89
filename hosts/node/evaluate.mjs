#!/usr/bin/env node
// One evaluation of a bundle's objective, for integration tests and debugging:
//   node evaluate.mjs --bundle DIR --reference
//       run the manifest's reference case; prints each quantity's relative error; exit 0 if all are in tolerance
//   node evaluate.mjs --bundle DIR CONTENT STYLE --out DIR2 [--size N] [--style-size N] [--calibration-size N]
//       preprocess and weigh as stylize.mjs does (the calibration too), run targets, evaluate the objective at
//       the content image (the start
//       point, clipped to the pixel box) and write DIR2/image.f32 (that point), DIR2/grad.f32 (dL/dimage), both
//       float32 little-endian NCHW, and DIR2/result.json (dims, loss and its parts, k, the weights fed)
import fs from 'node:fs';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { calibrate } from './lib/calibration.mjs';
import { computeTargets, makeObjective, openBundle, pixelBox } from './lib/bundle.mjs';
import { HostError } from './lib/errors.mjs';
import { preprocess, readImage } from './lib/image.mjs';
import { checkReference } from './lib/reference.mjs';

async function main(argv) {
  const { values: v, positionals } = parseArgs({ args: argv, allowPositionals: true, options: {
    bundle: { type: 'string' }, reference: { type: 'boolean' }, out: { type: 'string' }, size: { type: 'string' },
    'style-size': { type: 'string' }, 'calibration-size': { type: 'string' } } });
  if (!v.bundle) throw new HostError('--bundle DIR is required');
  const bundle = await openBundle(v.bundle);
  if (v.reference) {
    const { worst, limits, ok } = await checkReference(bundle);
    for (const [k, e] of Object.entries(worst)) console.log(`${k}: ${e.toExponential(2)} (limit ${limits[k]})`);
    console.log(ok ? 'reference case: ok' : 'reference case: FAILED');
    return ok ? 0 : 1;
  }
  if (positionals.length !== 2 || !v.out) throw new HostError('give CONTENT STYLE --out DIR (or --reference)');
  const prep = bundle.manifest.preprocessing;
  const size = v.size === undefined ? prep.resize.content_size : Number(v.size);
  const images = positionals.map((f) => readImage(f));
  const cal = calibrate(bundle.manifest, images[0], Math.min(images[1].width, images[1].height), {
    size, styleSize: v['style-size'] === undefined ? prep.resize.style_size : Number(v['style-size']),
    styleSizeGiven: v['style-size'] !== undefined,
    calibrationSize: v['calibration-size'] === undefined ? undefined : Number(v['calibration-size']) });
  const content = preprocess(images[0], size, prep);
  const style = preprocess(images[1], cal.styleSize, prep);
  const targets = await computeTargets(bundle, content, style);
  const { lo, hi } = pixelBox(bundle.manifest, content.dims);
  const x = Float64Array.from(content.data, (val, i) => Math.min(hi[i], Math.max(lo[i], val)));
  const out = await makeObjective(bundle, targets, content.dims, cal.weights)(x);
  fs.mkdirSync(v.out, { recursive: true });
  fs.writeFileSync(path.join(v.out, 'image.f32'), Buffer.from(Float32Array.from(x).buffer));
  fs.writeFileSync(path.join(v.out, 'grad.f32'), Buffer.from(Float32Array.from(out.grad).buffer));
  fs.writeFileSync(path.join(v.out, 'result.json'), JSON.stringify({ dims: content.dims, style_dims: style.dims,
    loss: out.loss, parts: out.parts, k: cal.k, weights: cal.weights }, null, 1));
  return 0;
}

main(process.argv.slice(2)).then((code) => { process.exitCode = code; }, (e) => {
  console.error(`evaluate.mjs: error: ${e.message.split('\n')[0]}`);
  process.exitCode = e instanceof HostError ? 2 : 1;
});
