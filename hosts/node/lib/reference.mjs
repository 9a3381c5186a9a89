// The bundle's reference case in Node: the same checks as `nst bundle --check` runs in Python.
import path from 'node:path';
import { computeTargets, makeObjective } from './bundle.mjs';
import { preprocess, readImage } from './image.mjs';

/** Checksums of a gradient (flat NCHW): L2 norm, sum |g|, sum ((i mod 13) - 6) / 6 * g_i (manifest.reference). */
export function gradChecksums(grad) {
  let l2 = 0, abs = 0, weighted = 0;
  for (let i = 0; i < grad.length; i++) {
    const g = grad[i];
    l2 += g * g;
    abs += Math.abs(g);
    weighted += ((i % 13) - 6) / 6 * g;
  }
  return { grad_l2: Math.sqrt(l2), grad_abs_sum: abs, grad_weighted_sum: weighted };
}

/** Run the reference case of an open bundle: {worst: {quantity: relative error}, limits, ok}. */
export async function checkReference(bundle) {
  const m = bundle.manifest;
  const ref = m.reference;
  const img = (key) => preprocess(readImage(path.join(bundle.dir, ref[key])), null, m.preprocessing);
  const image = img('image');
  const targets = await computeTargets(bundle, img('content_image'), img('style_image'));
  const out = await makeObjective(bundle, targets, image.dims)(Float64Array.from(image.data));
  const exp = ref.expected;
  const tol = ref.tolerance;
  const rel = (got, want, scale = want) => Math.abs(got - want) / Math.max(Math.abs(scale), 1e-30);
  const worst = { loss: rel(out.loss, exp.loss), content_loss: rel(out.parts.content, exp.content_loss),
    style_loss: rel(out.parts.style, exp.style_loss), tv_loss: rel(out.parts.tv, exp.tv_loss) };
  const sums = gradChecksums(out.grad);
  worst.grad_l2 = rel(sums.grad_l2, exp.grad_l2);
  worst.grad_abs_sum = rel(sums.grad_abs_sum, exp.grad_abs_sum);
  worst.grad_weighted_sum = rel(sums.grad_weighted_sum, exp.grad_weighted_sum, exp.grad_abs_sum);
  for (const [name, want] of Object.entries(exp.targets_l2)) {
    let s = 0;
    for (const v of targets[name].data) s += v * v;
    worst[name] = rel(Math.sqrt(s), want);
  }
  const limits = {};
  for (const k of Object.keys(worst)) {
    limits[k] = k.includes('loss') ? tol.loss_rtol : k.startsWith('grad_') ? tol.grad_rtol : tol.targets_rtol;
  }
  const ok = Object.keys(worst).every((k) => worst[k] <= limits[k]);
  return { worst, limits, ok };
}
