// The page's client of `nst serve`'s API (/v1): submit, status, events, preview, result, cancel, health.
// Every failure is an ApiError whose message is one line: the problem document's detail when the server sent one.

import { EventStreamParser } from './sse.mjs';

/** An error the page shows as it is: one line naming the problem; `status` is the HTTP status (0: no answer). */
export class ApiError extends Error {
  constructor(message, status = 0) {
    super(message);
    this.status = status;
  }
}

/** The statuses after which a job does not change. */
export const FINAL = new Set(['succeeded', 'failed', 'cancelled']);

const firstLine = (text) => String(text).trim().split('\n')[0];

/** A random Idempotency-Key (128 bits, hex). crypto.getRandomValues works on plain http too, randomUUID does not. */
export function newKey() {
  return Array.from(crypto.getRandomValues(new Uint8Array(16)), (b) => b.toString(16).padStart(2, '0')).join('');
}

/** The one-line message of a refused request: an RFC 9457 problem document's detail (or title), else the text. */
export async function problemMessage(response) {
  let text = '';
  try {
    text = await response.text();
  } catch { /* the body did not arrive */ }
  try {
    const problem = JSON.parse(text);
    if (problem && (problem.detail || problem.title)) return firstLine(problem.detail || problem.title);
  } catch { /* not JSON */ }
  return firstLine(text) || `HTTP ${response.status} ${response.statusText}`;
}

function parseData(event) {
  try {
    return JSON.parse(event.data);
  } catch {
    throw new ApiError(`the server sent a ${event.type} event that is not JSON: ${firstLine(event.data).slice(0, 80)}`);
  }
}

/** A client of the server at `base` (the page's own origin unless given); token: a string sent as Bearer, or ''. */
export function connect({ base = location.origin, token = '' } = {}) {
  const auth = token ? { Authorization: `Bearer ${token}` } : {};

  async function request(method, path, { body = null, headers = {}, signal = undefined, ok = [] } = {}) {
    let response;
    try {
      response = await fetch(base + path, { method, body, signal, headers: { ...auth, ...headers }, cache: 'no-store' });
    } catch (e) {
      if (e.name === 'AbortError') throw e;
      throw new ApiError(`the server does not answer (${firstLine(e.message)})`);
    }
    if (!response.ok && !ok.includes(response.status)) {
      throw new ApiError(await problemMessage(response), response.status);
    }
    return response;
  }

  const jobPath = (id) => `/v1/jobs/${encodeURIComponent(id)}`;

  return {
    /** GET /v1/health: {status ("ok", or "stopping" with a 503 while the server drains), version, workers, queue}. */
    async health() {
      return (await request('GET', '/v1/health', { ok: [503] })).json();
    },

    /** POST /v1/jobs: content and style are Files (or Blobs with a name); spec: the Spec's options by their CLI
     * names. A POST that gets no answer is sent once more with the same Idempotency-Key, so it is one job. */
    async submit(content, style, spec, key = newKey()) {
      const form = () => {
        const f = new FormData();
        f.append('content', content, content.name || 'content');
        f.append('style', style, style.name || 'style');
        f.append('spec', JSON.stringify(spec));
        return f;
      };
      const headers = { 'Idempotency-Key': key };
      try {
        return await (await request('POST', '/v1/jobs', { body: form(), headers })).json();
      } catch (e) {
        if (!(e instanceof ApiError) || e.status !== 0) throw e;
        return (await request('POST', '/v1/jobs', { body: form(), headers })).json();
      }
    },

    /** GET /v1/jobs: {jobs (newest first), limit, offset, next (null: no older ones)}. */
    async jobs({ limit = 10, offset = 0 } = {}) {
      return (await request('GET', `/v1/jobs?limit=${limit}&offset=${offset}`)).json();
    },

    async remove(id) {
      await request('DELETE', jobPath(id));
    },

    async status(id) {
      return (await request('GET', jobPath(id))).json();
    },

    async cancel(id) {
      await request('POST', `${jobPath(id)}/cancel`);
    },

    /** The current preview: {blob (a JPEG), tag (its ETag)}, or null while the job has none yet or when it is
     * still the one tagged `tag` (sent as If-None-Match: an unchanged preview is not downloaded again). */
    async preview(id, { tag = '', signal } = {}) {
      const headers = tag ? { 'If-None-Match': tag } : {};
      const r = await request('GET', `${jobPath(id)}/preview`, { headers, signal, ok: [204, 304, 409] });
      return r.status === 200 ? { blob: await r.blob(), tag: r.headers.get('ETag') || '' } : null;
    },

    /** The result PNG: {blob, partial} (partial: a cancelled job's best picture so far). */
    async result(id) {
      const r = await request('GET', `${jobPath(id)}/result`);
      const partial = [...r.headers.entries()].some(([k, v]) => /partial/i.test(k) && !/^(0|false|no)$/i.test(v));
      return { blob: await r.blob(), partial };
    },

    /** Follows GET /v1/jobs/{id}/events until its final `status` event, whose data (a job document) it returns.
     * onProgress(data, event) for every other event (`progress`, a `status` that is not final). A dropped stream
     * is opened again with Last-Event-ID after the server's `retry:` (or 1 s), at most `attempts` times in a row
     * without an event in between (a server restarting on the same --data: its jobs go on); onDrop(failures) is
     * called before each new try. */
    async follow(id, onProgress, { signal, attempts = 30, onDrop = () => {} } = {}) {
      let lastId = '';
      let retry = 1000;
      for (let failures = 0; failures < attempts;) {
        const headers = { Accept: 'text/event-stream', ...(lastId ? { 'Last-Event-ID': lastId } : {}) };
        let response = null;
        try {
          response = await request('GET', `${jobPath(id)}/events`, { headers, signal });
        } catch (e) {
          if (e.name === 'AbortError' || (e instanceof ApiError && e.status >= 400 && e.status < 500)) throw e;
        }
        if (response) {
          const parser = new EventStreamParser();
          const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
          try {
            for (;;) {
              const { value, done } = await reader.read();
              if (done) break;
              for (const event of parser.feed(value)) {
                failures = 0;
                lastId = event.id;
                const data = parseData(event);
                if (event.type === 'status' && FINAL.has(data.status)) return data;
                onProgress(data, event);
              }
            }
          } catch (e) {
            if (!(e instanceof TypeError)) throw e; // TypeError: the connection broke; try again
          } finally {
            reader.cancel().catch(() => {});
          }
          if (parser.retry !== null) retry = parser.retry;
        }
        failures += 1;
        onDrop(failures);
        await new Promise((resolve) => setTimeout(resolve, retry));
      }
      throw new ApiError(`lost the job's event stream ${attempts} times in a row; reload the page to follow the job again`);
    },
  };
}
