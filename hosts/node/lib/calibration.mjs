// The size calibration of nst stylize (nst_core.schedule.calibration), for hosts: at an output size other than the
// bundle's calibration size the content and TV weights are multiplied by k = (h_c * w_c) / (h * w), and (unless the
// style size is given) the style size follows the output size. Plain JavaScript (the browser host uses it too).
// One scale only: nst's coarse-to-fine schedule is not in the hosts.
import { resizedSize, roundHalfEven } from './pixels.mjs';

/** [height, width] of a width x height image resized so that its smaller edge is `size` (nst's
 * imageio.resized_shape: the other edge trunc(size * long / short)). */
export function resizedShape(width, height, size) {
  const [w, h] = resizedSize(width, height, size);
  return [h, w];
}

/** k = pixels at calibrationSize / pixels at size of a width x height content image; 1 when calibrationSize is 0. */
export function sizeFactor(width, height, size, calibrationSize) {
  if (!calibrationSize) return 1;
  const [h, w] = resizedShape(width, height, size);
  const [hc, wc] = resizedShape(width, height, calibrationSize);
  return (hc * wc) / (h * w);
}

/** The style size nst stylize uses when none is given: round(styleSize * size / calibrationSize) (ties to even),
 * never enlarged beyond max(styleSize, min(limit, the style file's smaller edge `styleEdge`)) (limit: the
 * manifest's calibration.style_size_limit; none in a bundle from before it); styleSize itself when
 * calibrationSize is 0 or equals size. */
export function followingStyleSize(styleSize, size, calibrationSize, styleEdge, limit = Infinity) {
  if (!calibrationSize || size === calibrationSize) return styleSize;
  let scaled = Math.max(1, roundHalfEven(styleSize * size / calibrationSize));
  if (scaled > styleSize) scaled = Math.min(scaled, Math.max(styleSize, Math.min(limit, styleEdge ?? Infinity)));
  return scaled;
}

/** The manifest's calibration size (0 for a bundle from before the calibration section: its weights are raw). */
export function manifestCalibrationSize(manifest) {
  return (manifest.calibration && manifest.calibration.size) || 0;
}

/** {weight input: value} with the content and tv terms' values multiplied by k (manifest.weights says which
 * input is which term). `weights`: {input: value}, the manifest's or a preset's. */
export function calibratedWeights(manifest, weights, k) {
  const out = { ...weights };
  for (const w of manifest.weights) {
    if ((w.term === 'content' || w.term === 'tv') && w.input in out) out[w.input] = out[w.input] * k;
  }
  return out;
}

/**
 * Everything size-dependent of one run, as nst stylize computes it.
 * content: {width, height} of the content file; styleEdge: the style file's smaller edge;
 * options: size, styleSize (the base style size: the manifest's or a preset's), styleSizeGiven (true: use styleSize
 * as it is), styleSizeFollows (default: the manifest's calibration.style_size_follows_size; ignored when
 * styleSizeGiven), calibrationSize (default the manifest's; 0 = raw sums), weights ({input: value}, default the
 * manifest's).
 * Returns {k, weights, styleSize, calibrationSize}.
 */
export function calibrate(manifest, content, styleEdge, options) {
  const calibrationSize = options.calibrationSize ?? manifestCalibrationSize(manifest);
  const base = options.weights ?? Object.fromEntries(manifest.weights.map((w) => [w.input, w.value]));
  const k = sizeFactor(content.width, content.height, options.size, calibrationSize);
  const follows = !options.styleSizeGiven && Boolean(options.styleSizeFollows
    ?? (manifest.calibration && manifest.calibration.style_size_follows_size));
  const limit = (manifest.calibration && manifest.calibration.style_size_limit) || Infinity;
  const styleSize = follows ? followingStyleSize(options.styleSize, options.size, calibrationSize, styleEdge, limit)
    : options.styleSize;
  return { k, weights: calibratedWeights(manifest, base, k), styleSize, calibrationSize };
}
