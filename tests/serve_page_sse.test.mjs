// The page's event-stream parser (nst_core/serve/page/sse.mjs) on hand-written streams, whole and cut anywhere:
// node --test tests/serve_page_sse.test.mjs (run by tests/test_serve_page.py).
import assert from 'node:assert/strict';
import test from 'node:test';
import { EventStreamParser } from '../nst_core/serve/page/sse.mjs';

const STREAM = ': a comment\r\n'
  + 'retry: 2500\r\n'
  + 'event: progress\r\nid: 12\r\ndata: {"evaluations": 12}\r\n\r\n'
  + 'event: progress\nid: 24\ndata:{"evaluations":\ndata: 24}\n\n'
  + 'event: ignored\n\n' // no data: nothing is dispatched, and the type is forgotten
  + 'data: plain\rretry: soon\r\r'
  + 'event: status\nid\ndata: {"status": "succeeded"}\n\n'
  + 'data: unfinished';
const EXPECTED = [
  { type: 'progress', data: '{"evaluations": 12}', id: '12' },
  { type: 'progress', data: '{"evaluations":\n24}', id: '24' },
  { type: 'message', data: 'plain', id: '24' }, // the last event id carries over
  { type: 'status', data: '{"status": "succeeded"}', id: '' }, // a bare `id` field empties it
];

test('a whole stream: types, ids, multi-line data, comments, retry, every line ending', () => {
  const parser = new EventStreamParser();
  assert.deepEqual(parser.feed(STREAM), EXPECTED);
  assert.equal(parser.retry, 2500); // `retry: soon` (not digits) is ignored
  assert.deepEqual(parser.feed('\n\n'), [{ type: 'message', data: 'unfinished', id: '' }]);
});

test('the same stream cut at every position, and fed one character at a time', () => {
  for (let cut = 0; cut <= STREAM.length; cut++) {
    const parser = new EventStreamParser();
    assert.deepEqual([...parser.feed(STREAM.slice(0, cut)), ...parser.feed(STREAM.slice(cut))], EXPECTED, `cut at ${cut}`);
  }
  const parser = new EventStreamParser();
  assert.deepEqual([...STREAM].flatMap((c) => parser.feed(c)), EXPECTED);
});

test('"\\r\\n" split between two chunks is one line end, not an empty line', () => {
  const parser = new EventStreamParser();
  assert.deepEqual(parser.feed('data: a\r'), []);
  assert.deepEqual(parser.feed('\ndata: b\r'), []);
  assert.deepEqual(parser.feed('\n\r\n'), [{ type: 'message', data: 'a\nb', id: '' }]);
});
