// An nst bundle in Node: the manifest, the two ONNX Runtime sessions, the targets run and the objective.
import fs from 'node:fs';
import path from 'node:path';
import ort from 'onnxruntime-node';
import { HostError } from './errors.mjs';
import { pixelBox } from './pixels.mjs';

export const FORMAT = 'nst-bundle';
export const FORMAT_VERSION = 1;

/** Read and check DIR/manifest.json: {dir, manifest}. HostError for a missing or foreign bundle. */
export function readManifest(dir) {
  let st;
  try {
    st = fs.statSync(dir);
  } catch {
    throw new HostError(`${dir}: no such bundle directory (make one with: nst bundle ${dir})`);
  }
  if (!st.isDirectory()) throw new HostError(`${dir}: not a directory (a bundle is a directory made by nst bundle)`);
  const file = path.join(dir, 'manifest.json');
  let manifest;
  try {
    manifest = JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch (e) {
    throw new HostError(e.code === 'ENOENT' ? `${dir}: no manifest.json (make a bundle with: nst bundle ${dir})`
      : `${file}: cannot read the manifest (${e.message.split('\n')[0]})`);
  }
  if (!manifest || manifest.format !== FORMAT) throw new HostError(`${file}: not an nst bundle manifest`);
  if (manifest.format_version !== FORMAT_VERSION) {
    throw new HostError(`${file}: format version ${manifest.format_version}, this host reads ${FORMAT_VERSION}`);
  }
  return { dir, manifest };
}

/** Open a bundle: the manifest and one session per model (spinning off: the host calls them in turn). */
export async function openBundle(dir, { threads = 0 } = {}) {
  const { manifest } = readManifest(dir);
  const options = { graphOptimizationLevel: 'all', logSeverityLevel: 3, extra: { session: { intra_op: { allow_spinning: '0' } } } };
  if (threads) options.intraOpNumThreads = threads;
  const sessions = {};
  for (const name of ['targets', 'objective']) {
    const file = path.join(dir, manifest.models[name].file);
    if (!fs.existsSync(file)) throw new HostError(`${file}: missing from the bundle`);
    try {
      sessions[name] = await ort.InferenceSession.create(file, options);
    } catch (e) {
      throw new HostError(`${file}: ONNX Runtime cannot load it (${String(e.message).split('\n')[0]})`);
    }
  }
  return { dir, manifest, sessions };
}

/** Run targets.onnx once: content image / style image ({data, dims}) -> {name: ort.Tensor} of its outputs. */
export async function computeTargets(bundle, content, style) {
  const feeds = {};
  for (const input of bundle.manifest.models.targets.inputs) {
    const img = input.name === 'content_image' ? content : style;
    feeds[input.name] = new ort.Tensor('float32', img.data, img.dims);
  }
  return bundle.sessions.targets.run(feeds);
}

/** The weights as the objective's inputs: {input name: value}, from the manifest unless overridden. */
export function weightFeeds(manifest, overrides = {}) {
  const out = {};
  for (const w of manifest.weights) out[w.input] = overrides[w.input] ?? w.value;
  return out;
}

/**
 * objective(x) for the optimizer: x Float64Array (normalised NCHW pixels of `dims`) ->
 * Promise<{loss, grad: Float32Array, parts: {content, style, tv}}>. One objective.onnx call per evaluation;
 * the image buffer and the target / weight tensors are made once and reused.
 */
export function makeObjective(bundle, targets, dims, weights = weightFeeds(bundle.manifest)) {
  const image = new Float32Array(dims.reduce((a, b) => a * b, 1));
  const feeds = { image: new ort.Tensor('float32', image, dims) };
  for (const input of bundle.manifest.models.objective.inputs) {
    if (input.name === 'image') continue;
    if (input.name in weights) feeds[input.name] = new ort.Tensor('float32', Float32Array.of(weights[input.name]), []);
    else if (input.name in targets) feeds[input.name] = targets[input.name];
    else throw new HostError(`the objective needs input ${input.name}, which neither targets nor the weights give`);
  }
  const session = bundle.sessions.objective;
  return async (x) => {
    image.set(x);
    const out = await session.run(feeds);
    const scalar = (name) => Number(out[name].data[0]);
    return { loss: scalar('loss'), grad: out.grad_image.data,
      parts: { content: scalar('content_loss'), style: scalar('style_loss'), tv: scalar('tv_loss') } };
  };
}

export { pixelBox }; // it lives beside the other pixel arithmetic (no Node imports: the browser uses it too)
