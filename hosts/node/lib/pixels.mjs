// Pixels for an nst bundle, in plain JavaScript (no Node.js module): RGBA to RGB, Pillow's BILINEAR resize, the
// manifest's normalisation and back. Shared by the Node host (image.mjs) and the browser host (hosts/web).
// Pixels are row-major RGB bytes (Uint8Array of height * width * 3).

/** RGBA bytes (any alpha) -> RGB bytes, alpha composited over white in float32 as nst's Python side does. */
export function rgbaToRgb(rgba, width, height) {
  const rgb = new Uint8Array(width * height * 3);
  const f = Math.fround;
  for (let i = 0, j = 0; i < width * height; i++, j += 4) {
    const a = f(rgba[j + 3] / 255);
    for (let c = 0; c < 3; c++) {
      const v = a === 1 ? rgba[j + c] : roundHalfEven(f(f(rgba[j + c] * a) + f(255 * f(1 - a))));
      rgb[i * 3 + c] = Math.min(255, Math.max(0, v));
    }
  }
  return rgb;
}

/** Round to the nearest integer, ties to even (NumPy's rint). */
export function roundHalfEven(v) {
  const r = Math.round(v);
  return (r - v === 0.5 && r % 2 !== 0) ? r - 1 : r;
}

/** torchvision / nst resize rule: the smaller edge becomes `size`, the other trunc(size * long / short). */
export function resizedSize(width, height, size) {
  if (width <= height) return [size, Math.trunc(size * height / width)];
  return [Math.trunc(size * width / height), size];
}

const PRECISION_BITS = 32 - 8 - 2;

// Pillow's precompute_coeffs + normalize_coeffs_8bpc for the bilinear (triangle) filter: for each output index,
// the first input index, the number of taps, and 22-bit fixed-point weights.
function coefficients(inSize, outSize) {
  const scale = inSize / outSize;
  const filterscale = Math.max(scale, 1.0);
  const support = filterscale; // the triangle's support is 1
  const ksize = Math.ceil(support) * 2 + 1;
  const kk = new Int32Array(outSize * ksize);
  const bounds = new Int32Array(outSize * 2);
  const pre = new Float64Array(ksize);
  const ss = 1.0 / filterscale;
  for (let xx = 0; xx < outSize; xx++) {
    const center = (xx + 0.5) * scale;
    let xmin = Math.trunc(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    let xmax = Math.trunc(center + support + 0.5);
    if (xmax > inSize) xmax = inSize;
    xmax -= xmin;
    let ww = 0.0;
    for (let x = 0; x < xmax; x++) {
      const t = Math.abs((x + xmin - center + 0.5) * ss);
      pre[x] = t < 1.0 ? 1.0 - t : 0.0;
      ww += pre[x];
    }
    for (let x = 0; x < ksize; x++) {
      let w = x < xmax ? pre[x] : 0;
      if (x < xmax && ww !== 0.0) w /= ww;
      kk[xx * ksize + x] = Math.trunc(w < 0 ? -0.5 + w * (1 << PRECISION_BITS) : 0.5 + w * (1 << PRECISION_BITS));
    }
    bounds[xx * 2] = xmin;
    bounds[xx * 2 + 1] = xmax;
  }
  return { ksize, kk, bounds };
}

function clip8(v) {
  if (v >= (1 << PRECISION_BITS) * 256) return 255;
  if (v <= 0) return 0;
  return v >> PRECISION_BITS;
}

// One pass of Pillow's separable resampling along rows (horizontal) or columns (vertical).
function pass(src, w, h, outSize, horizontal) {
  const { ksize, kk, bounds } = coefficients(horizontal ? w : h, outSize);
  const ow = horizontal ? outSize : w;
  const oh = horizontal ? h : outSize;
  const out = new Uint8Array(ow * oh * 3);
  const half = 1 << (PRECISION_BITS - 1);
  for (let y = 0; y < oh; y++) {
    for (let x = 0; x < ow; x++) {
      const o = horizontal ? x : y;
      const min = bounds[o * 2];
      const n = bounds[o * 2 + 1];
      const k = o * ksize;
      for (let c = 0; c < 3; c++) {
        let acc = half;
        for (let i = 0; i < n; i++) {
          const idx = horizontal ? (y * w + min + i) * 3 + c : ((min + i) * w + x) * 3 + c;
          acc += src[idx] * kk[k + i];
        }
        out[(y * ow + x) * 3 + c] = clip8(acc);
      }
    }
  }
  return out;
}

/** Resize 8-bit RGB to (newWidth, newHeight) as Pillow's Image.resize(..., BILINEAR) does: horizontal pass
 * first, then vertical, each skipped when that size does not change. Returns a new Uint8Array. */
export function resizeBilinear(rgb, width, height, newWidth, newHeight) {
  let data = rgb;
  if (newWidth !== width) data = pass(data, width, height, newWidth, true);
  if (newHeight !== height) data = pass(data, newWidth, height, newHeight, false);
  return data === rgb ? Uint8Array.from(rgb) : data;
}

/** An image as the network's input: smaller edge resized to `size` (null: as is), then
 * x[c] = (v / 255 - mean[c]) / std[c] in float32, NCHW. Returns {data: Float32Array, dims: [1, 3, h, w]}. */
export function preprocess(image, size, prep) {
  let { width, height, rgb } = image;
  if (size != null) {
    const [w, h] = resizedSize(width, height, size);
    if (w !== width || h !== height) {
      rgb = resizeBilinear(rgb, width, height, w, h);
      width = w;
      height = h;
    }
  }
  const f = Math.fround;
  const mean = prep.mean.map(f);
  const std = prep.std.map(f);
  const plane = width * height;
  const data = new Float32Array(3 * plane);
  for (let i = 0; i < plane; i++) {
    for (let c = 0; c < 3; c++) data[c * plane + i] = f(f(f(rgb[i * 3 + c] / 255) - mean[c]) / std[c]);
  }
  return { data, dims: [1, 3, height, width] };
}

/** Normalised NCHW pixels (any float array) -> 8-bit RGB: round(255 * clip(x * std + mean, 0, 1)) in float64. */
export function deprocess(x, height, width, prep) {
  const plane = width * height;
  const rgb = new Uint8Array(plane * 3);
  for (let i = 0; i < plane; i++) {
    for (let c = 0; c < 3; c++) {
      const v = Math.min(1, Math.max(0, x[c * plane + i] * prep.std[c] + prep.mean[c]));
      rgb[i * 3 + c] = roundHalfEven(v * 255);
    }
  }
  return rgb;
}

/** The pixel box of the manifest broadcast over an image of `dims`: {lo, hi} Float64Arrays. */
export function pixelBox(manifest, dims) {
  const plane = dims[2] * dims[3];
  const lo = new Float64Array(3 * plane);
  const hi = new Float64Array(3 * plane);
  for (let c = 0; c < 3; c++) {
    lo.fill(manifest.pixel_box.lo[c], c * plane, (c + 1) * plane);
    hi.fill(manifest.pixel_box.hi[c], c * plane, (c + 1) * plane);
  }
  return { lo, hi };
}
