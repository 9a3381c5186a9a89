// The page: inputs, the bundle's manifest, the preset menu, one Web Worker per run (worker.mjs), progress, preview,
// stop and download; and window.nst.run for automation. Errors are one line in #error, never only a console trace.
// Presets: presets.mjs.

import { fetchOk, PageError } from './fetch.mjs';
import { presetChoices } from './presets.mjs';

const $ = (id) => document.getElementById(id);
const SIZE_MIN = 128;
const SIZE_MAX = 512;
const PREVIEW_EVERY = 5;

// The smallest module that uses a SIMD instruction: type () -> v128, one function `i32.const 0; i8x16.splat`.
const SIMD_PROBE = Uint8Array.of(0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, 0x01, 0x05, 0x01, 0x60, 0x00, 0x01,
  0x7b, 0x03, 0x02, 0x01, 0x00, 0x0a, 0x08, 0x01, 0x06, 0x00, 0x41, 0x00, 0xfd, 0x0f, 0x0b);


const state = { manifest: null, bundleUrl: null, choices: {}, files: {}, worker: null, running: false };

function showError(message) {
  $('error').textContent = message;
}

function wasmProblem() {
  if (typeof WebAssembly !== 'object' || typeof WebAssembly.validate !== 'function') {
    return 'this browser has no WebAssembly, which the style transfer runs on; use a current Chrome, Edge, Firefox or Safari';
  }
  if (!WebAssembly.validate(SIMD_PROBE)) {
    return 'this browser has no WebAssembly SIMD, which onnxruntime-web needs; use a current Chrome, Edge, Firefox or Safari (16.4 or later)';
  }
  return null;
}

async function fetchJson(url, what) {
  const response = await fetchOk(url, what);
  try {
    return await response.json();
  } catch {
    throw new PageError(`${what} (${url}): not valid JSON`);
  }
}

async function loadBundle(bundleUrl) {
  const hint = 'make one with `nst bundle DIR` and serve it with `nst serve-web --bundle DIR`';
  let manifest;
  try {
    manifest = await fetchJson(new URL('manifest.json', bundleUrl).href, 'the bundle\'s manifest');
  } catch (e) {
    throw new PageError(`the bundle does not load: ${e.message}; ${hint}`);
  }
  if (!manifest || manifest.format !== 'nst-bundle') throw new PageError(`the bundle does not load: ${bundleUrl}manifest.json is not an nst bundle manifest; ${hint}`);
  if (manifest.format_version !== 1) throw new PageError(`the bundle does not load: format version ${manifest.format_version}, this page reads 1`);
  return manifest;
}

function fillMenus(choices) {
  const menu = $('preset');
  menu.textContent = '';
  for (const [name, c] of Object.entries(choices)) {
    const o = new Option(c.fits ? name + (c.own ? ' (the bundle\'s)' : '') : `${name} (does not fit: ${c.why})`, name);
    o.disabled = !c.fits;
    menu.add(o);
  }
  const threads = $('threads');
  const most = self.crossOriginIsolated ? Math.max(1, Math.min(8, navigator.hardwareConcurrency || 1)) : 1;
  for (let n = 1; n <= most; n++) threads.add(new Option(String(n), String(n)));
  // onnxruntime-web's own default: half the logical cores, at most 4 (1 on a 2-core machine, where a second thread
  // made each evaluation slower in bench/bench_web.py).
  threads.value = String(Math.min(most, 4, Math.ceil((navigator.hardwareConcurrency || 1) / 2)));
  threads.title = self.crossOriginIsolated ? '' : 'one thread: the page is not cross-origin isolated (serve it with nst serve-web)';
}

function checkedInt(value, what, lo, hi) {
  const n = Number(value);
  if (!Number.isInteger(n) || n < lo || n > hi) throw new PageError(`${what} must be a whole number from ${lo} to ${hi}, got ${value}`);
  return n;
}

function rgbToCanvas(canvas, rgb, width, height) {
  canvas.width = width;
  canvas.height = height;
  canvas.style.width = `${width * Math.max(1, Math.floor(384 / Math.max(width, height)))}px`;
  const ctx = canvas.getContext('2d');
  const img = ctx.createImageData(width, height);
  for (let i = 0, j = 0; i < width * height; i++, j += 4) {
    img.data[j] = rgb[i * 3];
    img.data[j + 1] = rgb[i * 3 + 1];
    img.data[j + 2] = rgb[i * 3 + 2];
    img.data[j + 3] = 255;
  }
  ctx.putImageData(img, 0, 0);
}

const fmt = (v) => (Math.abs(v) >= 1e5 || (Math.abs(v) < 1e-2 && v !== 0) ? v.toExponential(3) : v.toPrecision(5));

function showProgress(record, best, iterations) {
  $('progress').max = iterations;
  $('progress').value = record.evaluation;
  const rate = record.seconds > 0 ? ` · ${(record.evaluation / record.seconds).toFixed(1)} evaluations/s` : '';
  $('status').textContent = `evaluation ${record.evaluation} / ${iterations} · loss ${fmt(record.loss)} (best ${fmt(best)})${rate}`;
  $('parts').textContent = `content ${fmt(record.content)} · style ${fmt(record.style)} · tv ${fmt(record.tv)}`;
}

/** One run in a fresh worker. content / style: Blobs. Resolves {history, png, status, message, threads, width,
 * height, preset, size, styleSize (the one used), k (the calibration's factor on the content and tv weights)}; rejects with a one-line PageError (also shown on the page). */
async function runJob({ content, style, preset, size, iterations, threads, styleSize, spinning = false }) {
  if (state.running) throw new PageError('a run is already in progress');
  if (!state.manifest) throw new PageError(state.loadError || 'the bundle has not loaded yet');
  const problem = wasmProblem();
  if (problem) throw new PageError(problem);
  const name = preset ?? Object.keys(state.choices)[0];
  const choice = state.choices[name];
  if (!choice) throw new PageError(`unknown preset ${name} (choose ${Object.keys(state.choices).join(', ')})`);
  if (!choice.fits) throw new PageError(`preset ${name} does not fit this bundle: ${choice.why}`);
  size = checkedInt(size ?? choice.size, 'the size', SIZE_MIN, SIZE_MAX);
  iterations = checkedInt(iterations ?? state.manifest.optimizer.iterations, 'the number of evaluations', 1, 100000);
  threads = checkedInt(threads ?? 1, 'the number of threads', 1, 16);
  if (threads > 1 && !self.crossOriginIsolated) throw new PageError('more than one thread needs a cross-origin isolated page (serve it with nst serve-web)');
  // the style size, unless given, follows the size as nst stylize's does (lib/calibration.mjs, in the worker)
  const styleSizeGiven = styleSize !== undefined && styleSize !== null;
  const cal = state.manifest.calibration;
  const styleSizeFollows = choice.own ? Boolean(cal && cal.style_size_follows_size) : Boolean(cal && cal.size);
  styleSize = checkedInt(styleSize ?? choice.styleSize, 'the style size', state.manifest.min_input_size, 2048);
  if (!content || !style) throw new PageError(`choose ${!content ? 'a photo' : 'a painting'} first`);
  state.running = true;
  showError('');
  $('start').disabled = true;
  $('stop').disabled = false;
  $('download').setAttribute('aria-disabled', 'true');
  $('status').textContent = 'Starting…';
  $('parts').textContent = '';
  $('progress').value = 0;
  let k = 1;
  const worker = new Worker(new URL('./worker.mjs', import.meta.url), { type: 'module' });
  state.worker = worker;
  try {
    const done = await new Promise((resolve, reject) => {
      let threadsUsed = threads;
      worker.onmessage = ({ data }) => {
        if (data.type === 'started') ({ threads: threadsUsed, styleSize, k } = data);
        else if (data.type === 'progress') showProgress(data.record, data.best, iterations);
        else if (data.type === 'preview') {
          rgbToCanvas($('preview'), data.rgb, data.width, data.height);
          $('preview').dataset.evaluation = data.evaluation;
        }
        else if (data.type === 'done') resolve({ ...data, threads: threadsUsed });
        else if (data.type === 'error') reject(new PageError(data.message));
      };
      worker.onerror = (e) => { e.preventDefault(); reject(new PageError(`the worker failed: ${e.message || 'it did not start (are /ort/ and /lib/ served?)'}`)); };
      worker.postMessage({ type: 'run', bundle: state.bundleUrl, manifest: state.manifest, content, style, size,
        styleSize, styleSizeGiven, styleSizeFollows, iterations, weights: choice.weights, threads, spinning,
        previewEvery: PREVIEW_EVERY });
    });
    const canvas = $('preview');
    rgbToCanvas(canvas, done.rgb, done.width, done.height);
    const png = canvas.toDataURL('image/png');
    $('download').href = png;
    $('download').setAttribute('aria-disabled', 'false');
    const last = done.history[done.history.length - 1];
    $('status').textContent = `${done.status === 'interrupted' ? 'Stopped' : 'Done'}: ${done.history.length} evaluations `
      + `in ${last ? last.seconds.toFixed(1) : 0} s, ${threads} thread(s); best loss ${fmt(done.loss)}. ${done.message}`;
    if (done.parts && done.parts.content !== undefined) {
      $('parts').textContent = `content ${fmt(done.parts.content)} · style ${fmt(done.parts.style)} · tv ${fmt(done.parts.tv)}`;
    }
    return { history: done.history, png, status: done.status, message: done.message, threads: done.threads,
      width: done.width, height: done.height, preset: name, size, styleSize, k };
  } catch (e) {
    const message = e instanceof PageError ? e.message : `the run failed: ${String(e && e.message || e).split('\n')[0]}`;
    showError(message);
    $('status').textContent = 'Failed.';
    throw new PageError(message);
  } finally {
    worker.terminate();
    state.worker = null;
    state.running = false;
    $('stop').disabled = true;
    $('start').disabled = !state.manifest;
  }
}

function stop() {
  if (state.worker) state.worker.postMessage({ type: 'stop' });
}

async function fetchBlob(url, what) {
  return (await fetchOk(url, what)).blob();
}

/** Automation: content / style are URLs. Resolves {history: [{evaluation, seconds, loss, content, style, tv}],
 * png: data URL, ...}; rejects with the one-line message that the page shows. */
async function run(options = {}) {
  try {
    const [content, style] = await Promise.all([fetchBlob(options.content, 'the photo'), fetchBlob(options.style, 'the painting')]);
    return await runJob({ ...options, content, style });
  } catch (e) {
    if (e instanceof PageError) showError(e.message);
    throw e;
  }
}

function setFile(which, file) {
  if (!file) return;
  state.files[which] = file;
  const thumb = $(`${which}-thumb`);
  if (thumb.src) URL.revokeObjectURL(thumb.src);
  thumb.src = URL.createObjectURL(file);
  thumb.hidden = false;
  thumb.onerror = () => showError(`the ${which === 'content' ? 'photo' : 'painting'} ${file.name}: cannot decode the image`);
  thumb.onload = () => { if ($('error').textContent.includes(file.name)) showError(''); };
}

function wireInputs() {
  for (const which of ['content', 'style']) {
    $(`${which}-file`).addEventListener('change', (e) => setFile(which, e.target.files[0]));
    const zone = $(`${which}-drop`);
    zone.addEventListener('dragover', (e) => { e.preventDefault(); zone.classList.add('over'); });
    zone.addEventListener('dragleave', () => zone.classList.remove('over'));
    zone.addEventListener('drop', (e) => {
      e.preventDefault();
      zone.classList.remove('over');
      setFile(which, e.dataTransfer.files[0]);
    });
  }
  $('preset').addEventListener('change', () => {
    const c = state.choices[$('preset').value];
    if (c) $('size').value = c.size;
  });
  $('start').addEventListener('click', () => {
    runJob({ content: state.files.content, style: state.files.style, preset: $('preset').value,
      size: $('size').value, iterations: $('iterations').value, threads: $('threads').value }).catch(() => {});
  });
  $('stop').addEventListener('click', stop);
}

async function init() {
  wireInputs();
  const problem = wasmProblem();
  if (problem) throw new PageError(problem);
  const params = new URLSearchParams(location.search);
  state.bundleUrl = new URL(params.get('bundle') || 'bundle/', location.href).href;
  if (!state.bundleUrl.endsWith('/')) state.bundleUrl += '/';
  const manifest = await loadBundle(state.bundleUrl);
  let table = null;
  try {
    table = (await fetchJson(new URL('presets.json', location.href).href, 'presets')).presets;
  } catch { /* only the bundle's own preset */ }
  state.choices = presetChoices(manifest, table);
  state.manifest = manifest;
  fillMenus(state.choices);
  $('size').value = Object.values(state.choices)[0].size;
  $('iterations').value = manifest.optimizer.iterations;
  $('start').disabled = false;
  $('status').textContent = `Ready: bundle ${state.bundleUrl} (${manifest.problem.preset || 'custom'} weights, style scale `
    + `${manifest.problem.style_scale}); ${self.crossOriginIsolated ? 'cross-origin isolated, threads available' : 'not cross-origin isolated: one thread'}.`;
  return { manifest, presets: Object.keys(state.choices).filter((k) => state.choices[k].fits) };
}

const ready = init().catch((e) => {
  const message = e instanceof PageError ? e.message : `the page failed to start: ${String(e && e.message || e).split('\n')[0]}`;
  state.loadError = message;
  showError(message);
  $('status').textContent = 'Not ready.';
  throw new PageError(message);
});
ready.catch(() => {});

window.nst = { run, stop, ready };
