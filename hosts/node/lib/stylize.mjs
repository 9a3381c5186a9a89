// One style transfer through a bundle: preprocess, targets once, L-BFGS over objective.onnx.
import { computeTargets, makeObjective, openBundle, pixelBox } from './bundle.mjs';
import { calibrate } from './calibration.mjs';
import { HostError } from './errors.mjs';
import { deprocess, preprocess, readImage } from './image.mjs';
import { lbfgs } from './lbfgs.mjs';

/**
 * Paint `contentFile` in the style of `styleFile` with the bundle at `bundleDir`.
 * options: size, styleSize (smaller edges in px; default the manifest's, the style size following the size as
 * the manifest's calibration says), calibrationSize (px; default the manifest's, 0 = the raw weights at any size),
 * iterations (objective evaluations,
 * default the manifest's optimizer section), history, memoryDtype ('float32' default, or 'float64': the L-BFGS
 * pairs' precision), callback(record, x), shouldStop().
 * Returns {rgb: Uint8Array, width, height, result (lbfgs's), calibration (calibrate's)}. HostError for bad input.
 */
export async function stylize(bundleDir, contentFile, styleFile, options = {}) {
  const bundle = await openBundle(bundleDir, { threads: options.threads || 0 });
  const m = bundle.manifest;
  const prep = m.preprocessing;
  const size = options.size ?? prep.resize.content_size;
  if (!Number.isInteger(size) || size < m.min_input_size) {
    throw new HostError(`size ${size} is too small: the bundle's network needs at least ${m.min_input_size} px`);
  }
  const calibrationSize = options.calibrationSize;
  if (calibrationSize !== undefined && !(Number.isInteger(calibrationSize) && calibrationSize >= 0)) {
    throw new HostError(`calibration size must be a whole number of pixels >= 0, got ${calibrationSize}`);
  }
  const contentImage = readImage(contentFile);
  const styleImage = readImage(styleFile);
  const cal = calibrate(m, contentImage, Math.min(styleImage.width, styleImage.height), {
    size, styleSize: options.styleSize ?? prep.resize.style_size, styleSizeGiven: options.styleSize !== undefined,
    calibrationSize });
  const styleSize = cal.styleSize;
  if (!Number.isInteger(styleSize) || styleSize < m.min_input_size) {
    throw new HostError(`style size ${styleSize} is too small: the bundle's network needs at least ${m.min_input_size} px`);
  }
  const iterations = options.iterations ?? m.optimizer.iterations;
  if (!Number.isInteger(iterations) || iterations < 1) throw new HostError(`iterations must be >= 1, got ${iterations}`);
  const content = preprocess(contentImage, size, prep);
  const style = preprocess(styleImage, styleSize, prep);
  const targets = await computeTargets(bundle, content, style);
  const objective = makeObjective(bundle, targets, content.dims, cal.weights);
  const { lo, hi } = pixelBox(m, content.dims);
  const opt = m.optimizer;
  const result = await lbfgs(objective, Float64Array.from(content.data), iterations, {
    lo, hi, history: options.history ?? opt.history, memoryDtype: options.memoryDtype ?? 'float32', lr: opt.lr, c1: opt.c1, maxBacktracks: opt.max_backtracks,
    callback: options.callback, shouldStop: options.shouldStop,
  });
  const [, , height, width] = content.dims;
  return { rgb: deprocess(result.x, height, width, prep), width, height, result, calibration: cal };
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
