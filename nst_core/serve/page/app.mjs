// The page of `nst serve`: choose a photo and a painting, a preset and a size, submit to POST /v1/jobs, follow the
// job's events (progress bar, the preview as it improves), cancel, download the result PNG. The job being watched
// is remembered in localStorage, so a reloaded page follows it again. Errors are one line in #error.

import { ApiError, connect, FINAL } from './api.mjs';

const $ = (id) => document.getElementById(id);
const PREVIEW_EVERY_MS = 1000; // the workers make a preview every 2 s; look twice as often
const HEALTH_EVERY_MS = 3000; // the server line (workers, jobs running and queued) while a job is followed
const JOB_KEY = 'nst-serve-job';
const JOBS_PER_PAGE = 10;

const state = { files: {}, job: null, abort: null, previewAt: 0, previewBusy: false, previewTag: '', previews: 0, url: null,
  firstSeen: null, jobsOffset: 0, submitting: false };

function showError(message) {
  $('error').textContent = message;
}

function api() {
  return connect({ token: $('token').value.trim() });
}

const fmt = (v) => (v === null || v === undefined ? '–'
  : Math.abs(v) >= 1e5 || (Math.abs(v) < 1e-2 && v !== 0) ? v.toExponential(3) : v.toPrecision(5));

function checkedInt(value, what, lo, hi) {
  const n = Number(value);
  if (!Number.isInteger(n) || n < lo || n > hi) throw new ApiError(`${what} must be a whole number from ${lo} to ${hi}, got ${value || 'nothing'}`);
  return n;
}

function setFile(which, file) {
  if (!file) return;
  state.files[which] = file;
  const thumb = $(`${which}-thumb`);
  if (thumb.src) URL.revokeObjectURL(thumb.src);
  thumb.src = URL.createObjectURL(file);
  thumb.hidden = false;
  thumb.onerror = () => showError(`the ${which === 'content' ? 'photo' : 'painting'} ${file.name}: this browser cannot show it (the server takes JPEG, PNG and WebP)`);
  thumb.onload = () => { if ($('error').textContent.includes(file.name)) showError(''); };
  updateButtons();
}

function updateButtons() {
  $('start').disabled = state.submitting || !state.files.content || !state.files.style;
  $('cancel').disabled = state.job === null;
}

/** Shows a picture in #preview; kind: "preview" (a JPEG while the job runs) or "result" (the PNG). */
function showPicture(blob, evaluation, kind) {
  const img = $('preview');
  const url = URL.createObjectURL(blob);
  img.onload = () => { if (state.url && state.url !== url) URL.revokeObjectURL(state.url); state.url = url; };
  img.src = url;
  img.hidden = false;
  img.dataset.evaluation = String(evaluation);
  img.dataset.kind = kind;
  state.previews += 1;
  img.dataset.previews = String(state.previews);
}

/** A progress document ({evaluations, budget, scale, scales, loss}) into the bar and the status line. */
function showProgress(p) {
  if (!p || p.evaluations === undefined) return;
  $('progress').max = Math.max(1, p.budget || 1);
  $('progress').value = Math.min(p.evaluations, p.budget || p.evaluations);
  const scale = p.scales > 1 ? ` · scale ${p.scale} / ${p.scales}` : '';
  const now = performance.now();
  const first = state.firstSeen;
  if (p.evaluations > 0 && (!first || p.evaluations < first.evaluations)) state.firstSeen = { now, evaluations: p.evaluations };
  const seconds = state.firstSeen ? (now - state.firstSeen.now) / 1000 : 0;
  const rate = seconds >= 1 ? ` · ${((p.evaluations - state.firstSeen.evaluations) / seconds).toFixed(1)} evaluations/s` : '';
  $('status').textContent = `Running: evaluation ${p.evaluations} / ${p.budget}${scale} · best loss ${fmt(p.loss)}${rate}`;
}

async function refreshPreview(id, evaluation) {
  const now = performance.now();
  if (state.previewBusy || now - state.previewAt < PREVIEW_EVERY_MS || state.job !== id) return;
  state.previewBusy = true;
  state.previewAt = now;
  try {
    const found = await api().preview(id, { tag: state.previewTag, signal: state.abort?.signal });
    if (found && state.job === id) {
      state.previewTag = found.tag;
      showPicture(found.blob, evaluation, 'preview');
    }
  } catch (e) {
    if (e.name !== 'AbortError') showError(`the preview: ${e.message}`);
  } finally {
    state.previewBusy = false;
  }
}

/** An event's job document (or a bare progress object) into the page. */
function onEvent(data) {
  const progress = data.progress ?? data;
  if (data.status === 'queued') {
    $('status').textContent = 'Queued: waiting for a worker…';
  } else if (progress.evaluations !== undefined) {
    showProgress(progress);
    if (progress.evaluations > 0) refreshPreview(state.job, progress.evaluations);
  }
}

function baseName(file) {
  return (file?.name || 'image').replace(/\.[^.]*$/, '').replace(/[^\w-]+/g, '_') || 'image';
}

async function finish(id, job, name) {
  const link = $('download');
  if (job.status === 'failed') {
    showError(`the job failed: ${job.error || 'no reason given'}`);
    $('status').textContent = 'Failed.';
    return;
  }
  if (job.status === 'cancelled' && !(job.progress?.evaluations > 0)) {
    $('status').textContent = 'Cancelled before it started: there is no picture.';
    return;
  }
  const { blob, partial } = await api().result(id);
  showPicture(blob, job.progress?.evaluations ?? '', 'result');
  link.download = `${name}${partial ? '-partial' : ''}.png`;
  if (link.href.startsWith('blob:')) URL.revokeObjectURL(link.href);
  link.href = URL.createObjectURL(blob);
  link.setAttribute('aria-disabled', 'false');
  link.dataset.partial = String(partial);
  const n = job.progress?.evaluations;
  const status = job.status === 'cancelled'
    ? `Cancelled after ${n ?? '?'} evaluations: the download is the best picture so far.`
    : `Done: ${n ?? '?'} evaluations, best loss ${fmt(job.progress?.loss)}.`;
  if (job.status === 'succeeded') {
    showProgress(job.progress);
    $('progress').value = $('progress').max; // also when the optimizer converged before its budget
  }
  $('status').textContent = status;
}

/** Follows job `id` to its end: the events, the previews, then the result or the failure; `name`: the download's
 * file name without ".png". The job is remembered in localStorage until then, so a reloaded page follows it again.
 * Following another job (a new submission, Watch in the list) stops following this one; it goes on on the server. */
async function follow(id, name = `nst-${id.slice(0, 8)}`) {
  if (state.abort) state.abort.abort();
  const abort = new AbortController();
  Object.assign(state, { job: id, abort, previews: 0, previewTag: '', firstSeen: null });
  Object.assign($('progress'), { max: 1, value: 0 });
  localStorage.setItem(JOB_KEY, JSON.stringify({ id, name }));
  updateButtons();
  showJobs();
  const client = api();
  const health = setInterval(refresh, HEALTH_EVERY_MS);
  const onDrop = (n) => {
    state.firstSeen = null; // a restarted server runs the job again from its start: measure the rate anew
    $('status').textContent = `The server does not answer; trying again (${n})…`;
  };
  try {
    let job = await client.status(id);
    onEvent(job);
    if (!FINAL.has(job.status)) job = await client.follow(id, onEvent, { signal: abort.signal, onDrop });
    if (abort.signal.aborted) return;
    await finish(id, job, name);
    localStorage.removeItem(JOB_KEY);
  } catch (e) {
    if (abort.signal.aborted) return;
    showError(e.message.split('\n')[0]);
    $('status').textContent = 'Stopped following the job.';
    if (e instanceof ApiError && e.status === 404) localStorage.removeItem(JOB_KEY);
  } finally {
    clearInterval(health);
    if (state.job === id) {
      state.job = null;
      updateButtons();
      refresh();
    }
  }
}

async function submit() {
  showError('');
  const link = $('download');
  link.setAttribute('aria-disabled', 'true');
  $('progress').value = 0;
  $('parts').textContent = '';
  try {
    const spec = {
      preset: $('preset').value,
      size: checkedInt($('size').value, 'the size', 64, 4096),
      iterations: checkedInt($('iterations').value, 'the number of evaluations', 1, 100000),
    };
    state.submitting = true;
    updateButtons();
    $('status').textContent = 'Uploading…';
    let job;
    try {
      job = await api().submit(state.files.content, state.files.style, spec);
    } finally {
      state.submitting = false;
      updateButtons();
    }
    $('parts').textContent = `job ${job.id}`;
    $('status').textContent = 'Queued: waiting for a worker…';
    follow(job.id, `${baseName(state.files.content)}-${baseName(state.files.style)}`);
  } catch (e) {
    showError(e.message.split('\n')[0]);
    $('status').textContent = 'Not submitted.';
  }
}

async function cancel() {
  if (!state.job) return;
  $('cancel').disabled = true;
  $('status').textContent = 'Cancelling…';
  try {
    await api().cancel(state.job);
  } catch (e) {
    showError(`cancel: ${e.message}`);
    $('cancel').disabled = false;
  }
}

async function showServer() {
  try {
    const h = await api().health();
    const workers = Array.isArray(h.workers) ? h.workers.length : '?';
    const queue = h.queue || {};
    const stopping = h.status === 'stopping' ? ' · stopping: it takes no new jobs until it is started again' : '';
    $('server').textContent = `Server: nst ${h.version} · ${workers} worker(s) · ${queue.running ?? '?'} job(s) `
      + `running, ${queue.queued ?? '?'} queued${stopping}`;
  } catch (e) {
    $('server').textContent = e.status === 401 ? `Server: asks for a token (${e.message})` : `Server: ${e.message}`;
  }
}

function button(text, onClick, disabled = false) {
  const b = document.createElement('button');
  b.textContent = text;
  b.disabled = disabled;
  b.addEventListener('click', onClick);
  return b;
}

/** Shows a job of the list: a final one's picture and download, or follows one that is not final. */
async function openJob(job) {
  showError('');
  if (!FINAL.has(job.status)) {
    follow(job.id);
    return;
  }
  if (state.abort) state.abort.abort(); // the job followed until now goes on on the server (Watch in the list)
  state.job = null;
  localStorage.removeItem(JOB_KEY);
  updateButtons();
  try {
    await finish(job.id, job, `nst-${job.id.slice(0, 8)}`);
  } catch (e) {
    showError(e.message.split('\n')[0]);
  }
}

async function remove(job) {
  if (state.job === job.id) state.abort.abort();
  try {
    await api().remove(job.id);
    $('status').textContent = `Deleted job ${job.id}.`;
  } catch (e) {
    showError(`delete: ${e.message.split('\n')[0]}`);
  }
  showJobs();
}

/** One row of the job list (every text set as text: nothing the server sends becomes markup). */
function jobRow(job) {
  const row = document.createElement('tr');
  row.dataset.id = job.id;
  row.dataset.status = job.status;
  const p = job.progress || {};
  const spec = job.spec || {};
  const created = job.created ? new Date(job.created).toLocaleString() : '';
  const status = job.status + (job.partial ? ' (partial)' : '') + (job.error ? `: ${job.error}` : '');
  for (const text of [created, status, `${p.evaluations ?? '?'} / ${p.budget ?? '?'}`,
    `${spec.preset ?? spec.task ?? ''}, ${spec.size ?? '?'} px`]) {
    row.insertCell().textContent = text;
  }
  const actions = row.insertCell();
  actions.append(button(FINAL.has(job.status) ? 'Show' : 'Watch', () => openJob(job), state.job === job.id),
    button('Delete', () => remove(job)));
  return row;
}

async function showJobs() {
  let page;
  try {
    page = await api().jobs({ limit: JOBS_PER_PAGE, offset: state.jobsOffset });
  } catch (e) {
    $('jobs-note').textContent = e.status === 401 ? 'Type your token to see your jobs.' : `The job list: ${e.message}`;
    return;
  }
  $('jobs').tBodies[0].replaceChildren(...page.jobs.map(jobRow));
  $('jobs-note').textContent = page.jobs.length ? '' : state.jobsOffset ? 'No older jobs.' : 'None yet.';
  $('older').hidden = !page.next;
  $('newer').hidden = state.jobsOffset === 0;
}

function refresh() {
  showServer();
  showJobs();
}

function wire() {
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
  $('start').addEventListener('click', submit);
  $('cancel').addEventListener('click', cancel);
  const token = $('token');
  token.value = sessionStorage.getItem('nst-serve-token') || '';
  token.addEventListener('change', () => { sessionStorage.setItem('nst-serve-token', token.value.trim()); refresh(); });
  $('older').addEventListener('click', () => { state.jobsOffset += JOBS_PER_PAGE; showJobs(); });
  $('newer').addEventListener('click', () => { state.jobsOffset = Math.max(0, state.jobsOffset - JOBS_PER_PAGE); showJobs(); });
}

function remembered() {
  try {
    const job = JSON.parse(localStorage.getItem(JOB_KEY));
    return job && typeof job.id === 'string' && /^[0-9a-f]{32}$/.test(job.id) ? job : null;
  } catch {
    return null;
  }
}

wire();
$('status').textContent = 'Choose a photo and a painting, then submit.';
refresh();
const pending = remembered();
if (pending) {
  $('status').textContent = `Following job ${pending.id} again…`;
  follow(pending.id, String(pending.name || '').replace(/[^\w-]+/g, '_') || undefined);
}
