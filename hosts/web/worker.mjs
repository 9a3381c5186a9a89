// The optimisation, off the page's thread: decode and preprocess both images, run targets.onnx once, then the
// Node host's L-BFGS (hosts/node/lib/lbfgs.mjs, served at /lib/) over objective.onnx on onnxruntime-web's
// WebAssembly backend. One worker per run: the thread count of the WebAssembly backend is fixed when it starts.
//
// Messages in:  {type: 'run', bundle (URL of the bundle directory, ending in '/'), manifest, content, style (Blobs),
//                size, styleSize (smaller edges, px), styleSizeGiven (false: the style size follows the size),
//                styleSizeFollows (what the bundle's preset does when not given), iterations,
//                weights ({objective input: value} at the calibration size: the content and tv weights are
//                multiplied by k here, lib/calibration.mjs, with the manifest's calibration size), threads,
//                spinning (let ORT's idle threads spin: off by default, see docs/hosts.md), previewEvery}
//               {type: 'stop'}  (ends the run after the current evaluation; the best point so far is the result)
// Messages out: {type: 'started', threads, width, height, styleSize, k (the calibration's factor)}
//               {type: 'progress', record: {evaluation, seconds, loss, content, style, tv}, best}
//               {type: 'preview', rgb, width, height, evaluation}
//               {type: 'done', rgb, width, height, history, status, message, loss, parts}
//               {type: 'error', message}   (one line, meant for the page)
//
// Module workers have no import maps, so `onnxruntime-web/wasm` is imported by its file: ort.wasm.min.mjs is what
// that export resolves to under its "onnxruntime-web-use-extern-wasm" condition, the WebAssembly-only build that
// loads ort-wasm-simd-threaded.mjs / .wasm from env.wasm.wasmPaths (here /ort/ on this origin, never a CDN).
import * as ort from './ort/ort.wasm.min.mjs';
import { fetchOk, PageError } from './fetch.mjs';
import { calibrate } from './lib/calibration.mjs';
import { lbfgs } from './lib/lbfgs.mjs';
import { deprocess, pixelBox, preprocess, rgbaToRgb } from './lib/pixels.mjs';


let stopRequested = false;

/** A macrotask boundary, so that a 'stop' message is handled between two evaluations (session.run resolves
 * through microtasks only). MessageChannel has no 4 ms clamp, unlike setTimeout. */
function yieldToEvents() {
  return new Promise((resolve) => {
    const ch = new MessageChannel();
    ch.port1.onmessage = () => { ch.port1.close(); resolve(); };
    ch.port2.postMessage(0);
  });
}

async function fetchBytes(url, what) {
  return new Uint8Array(await (await fetchOk(url, what)).arrayBuffer());
}

async function sha256Hex(bytes) {
  const digest = new Uint8Array(await crypto.subtle.digest('SHA-256', bytes));
  return Array.from(digest, (b) => b.toString(16).padStart(2, '0')).join('');
}

/** Decode an image Blob to {width, height, rgb} with no colour management (the file's 8-bit values, as Pillow
 * reads them), EXIF orientation applied (as nst does). */
async function decode(blob, what) {
  let bitmap;
  try {
    bitmap = await createImageBitmap(blob, { colorSpaceConversion: 'none', premultiplyAlpha: 'none',
      imageOrientation: 'from-image' });
  } catch (e) {
    throw new PageError(`${what}: cannot decode the image (${blob.type || 'unknown type'}, ${blob.size} bytes; `
      + 'a PNG, JPEG, WebP or GIF file is needed)');
  }
  const { width, height } = bitmap;
  const canvas = new OffscreenCanvas(width, height);
  const ctx = canvas.getContext('2d', { willReadFrequently: true });
  ctx.drawImage(bitmap, 0, 0);
  bitmap.close();
  const rgba = ctx.getImageData(0, 0, width, height, { colorSpace: 'srgb' }).data;
  return { width, height, rgb: rgbaToRgb(rgba, width, height) };
}

async function openSessions(bundleUrl, manifest, threads, spinning) {
  ort.env.wasm.wasmPaths = new URL('./ort/', import.meta.url).href;
  ort.env.wasm.numThreads = threads;
  ort.env.logLevel = 'error';
  const options = { executionProviders: ['wasm'], graphOptimizationLevel: 'all',
    extra: { session: { intra_op: { allow_spinning: spinning ? '1' : '0' } } } };
  const sessions = {};
  for (const name of ['targets', 'objective']) {
    const info = manifest.models[name];
    const url = new URL(info.file, bundleUrl).href;
    const bytes = await fetchBytes(url, `the bundle's ${name} model`);
    // crypto.subtle exists in secure contexts only (https, or http on localhost); elsewhere the check is skipped
    if (self.crypto && crypto.subtle && await sha256Hex(bytes) !== info.sha256) {
      throw new PageError(`the bundle's ${name} model (${url}): SHA-256 differs from the manifest's (rebuild it with nst bundle)`);
    }
    try {
      sessions[name] = await ort.InferenceSession.create(bytes, options);
    } catch (e) {
      throw new PageError(`the bundle's ${name} model (${url}): onnxruntime-web cannot load it (${String(e.message || e).split('\n')[0]})`);
    }
  }
  return sessions;
}

function objectiveFor(session, manifest, targets, dims, weights) {
  const image = new Float32Array(dims.reduce((a, b) => a * b, 1));
  const feeds = { image: new ort.Tensor('float32', image, dims) };
  for (const input of manifest.models.objective.inputs) {
    if (input.name === 'image') continue;
    if (input.name in weights) feeds[input.name] = new ort.Tensor('float32', Float32Array.of(weights[input.name]), []);
    else if (input.name in targets) feeds[input.name] = targets[input.name];
    else throw new PageError(`the bundle's objective needs input ${input.name}, which neither targets nor the weights give`);
  }
  return async (x) => {
    await yieldToEvents();
    image.set(x);
    const out = await session.run(feeds);
    const scalar = (name) => Number(out[name].data[0]);
    const result = { loss: scalar('loss'), grad: out.grad_image.data,
      parts: { content: scalar('content_loss'), style: scalar('style_loss'), tv: scalar('tv_loss') } };
    for (const name of ['loss', 'content_loss', 'style_loss', 'tv_loss']) out[name].dispose();
    return result;
  };
}

const flat = (r) => ({ evaluation: r.evaluation, seconds: r.seconds, loss: r.loss, ...r.parts });

async function run(msg) {
  const { manifest, size, iterations, threads, previewEvery } = msg;
  const prep = manifest.preprocessing;
  const photo = await decode(msg.content, 'the photo');
  const painting = await decode(msg.style, 'the painting');
  const { k, weights, styleSize } = calibrate(manifest, photo, Math.min(painting.width, painting.height), {
    size, styleSize: msg.styleSize, styleSizeGiven: Boolean(msg.styleSizeGiven), styleSizeFollows: msg.styleSizeFollows,
    weights: msg.weights });
  if (styleSize < manifest.min_input_size) {
    throw new PageError(`the style size ${styleSize} px (following the size ${size} px) is too small: the bundle's network needs at least ${manifest.min_input_size} px`);
  }
  const content = preprocess(photo, size, prep);
  const style = preprocess(painting, styleSize, prep);
  const sessions = await openSessions(msg.bundle, manifest, threads, Boolean(msg.spinning));
  const [, , height, width] = content.dims;
  self.postMessage({ type: 'started', threads: ort.env.wasm.numThreads, width, height, styleSize, k });
  const feeds = {};
  for (const input of manifest.models.targets.inputs) {
    const img = input.name === 'content_image' ? content : style;
    feeds[input.name] = new ort.Tensor('float32', img.data, img.dims);
  }
  const targets = await sessions.targets.run(feeds);
  const objective = objectiveFor(sessions.objective, manifest, targets, content.dims, weights);
  const { lo, hi } = pixelBox(manifest, content.dims);
  const opt = manifest.optimizer;
  let best = Infinity;
  const result = await lbfgs(objective, Float64Array.from(content.data), iterations, {
    lo, hi, history: opt.history, lr: opt.lr, c1: opt.c1, maxBacktracks: opt.max_backtracks,
    shouldStop: () => stopRequested,
    callback: (record, x) => {
      best = Math.min(best, record.loss);
      self.postMessage({ type: 'progress', record: flat(record), best });
      if (record.evaluation === 1 || record.evaluation % previewEvery === 0) {
        const rgb = deprocess(x, height, width, prep);
        self.postMessage({ type: 'preview', rgb, width, height, evaluation: record.evaluation }, [rgb.buffer]);
      }
    },
  });
  const rgb = deprocess(result.x, height, width, prep);
  self.postMessage({ type: 'done', rgb, width, height, history: result.history.map(flat), status: result.status,
    message: result.message, loss: result.loss, parts: result.parts }, [rgb.buffer]);
}

self.onmessage = (event) => {
  const msg = event.data;
  if (msg.type === 'stop') {
    stopRequested = true;
  } else if (msg.type === 'run') {
    run(msg).catch((e) => {
      const text = e instanceof PageError ? e.message : `the run failed: ${String(e && e.message || e).split('\n')[0]}`;
      self.postMessage({ type: 'error', message: text });
    });
  }
};
