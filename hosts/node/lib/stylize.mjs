// One style transfer through a bundle: preprocess, targets once, L-BFGS over objective.onnx.
import { computeTargets, makeObjective, openBundle, pixelBox } from './bundle.mjs';
import { HostError } from './errors.mjs';
import { deprocess, preprocess, readImage } from './image.mjs';
import { lbfgs } from './lbfgs.mjs';

/**
 * Paint `contentFile` in the style of `styleFile` with the bundle at `bundleDir`.
 * options: size, styleSize (smaller edges in px; default the manifest's), iterations (objective evaluations,
 * default the manifest's optimizer section), history, memoryDtype ('float32' default, or 'float64': the L-BFGS
 * pairs' precision), callback(record, x), shouldStop().
 * Returns {rgb: Uint8Array, width, height, result (lbfgs's)}. HostError for bad input.
 */
export async function stylize(bundleDir, contentFile, styleFile, options = {}) {
  const bundle = await openBundle(bundleDir, { threads: options.threads || 0 });
  const m = bundle.manifest;
  const prep = m.preprocessing;
  const size = options.size ?? prep.resize.content_size;
  const styleSize = options.styleSize ?? prep.resize.style_size;
  for (const [what, v] of [['size', size], ['style size', styleSize]]) {
    if (!Number.isInteger(v) || v < m.min_input_size) {
      throw new HostError(`${what} ${v} is too small: the bundle's network needs at least ${m.min_input_size} px`);
    }
  }
  const iterations = options.iterations ?? m.optimizer.iterations;
  if (!Number.isInteger(iterations) || iterations < 1) throw new HostError(`iterations must be >= 1, got ${iterations}`);
  const content = preprocess(readImage(contentFile), size, prep);
  const style = preprocess(readImage(styleFile), styleSize, prep);
  const targets = await computeTargets(bundle, content, style);
  const objective = makeObjective(bundle, targets, content.dims);
  const { lo, hi } = pixelBox(m, content.dims);
  const opt = m.optimizer;
  const result = await lbfgs(objective, Float64Array.from(content.data), iterations, {
    lo, hi, history: options.history ?? opt.history, memoryDtype: options.memoryDtype ?? 'float32', lr: opt.lr, c1: opt.c1, maxBacktracks: opt.max_backtracks,
    callback: options.callback, shouldStop: options.shouldStop,
  });
  const [, , height, width] = content.dims;
  return { rgb: deprocess(result.x, height, width, prep), width, height, result };
}

/** The history as CSV with nst stylize --log's columns: evaluation,seconds,loss,content,style,tv,scale. `side` is
 * the picture's smaller edge in pixels: nst's scale column (one scale here; nst's coarse-to-fine runs have several). */
export function logCsv(result, side) {
  const lines = ['evaluation,seconds,loss,content,style,tv,scale'];
  for (const r of result.history) {
    lines.push([r.evaluation, r.seconds, r.loss, r.parts.content, r.parts.style, r.parts.tv, side].map(String)
      .join(','));
  }
  return lines.join('\n') + '\n';
}
