// stylize.mjs's command line: bad input is one line on stderr and exit status 2; with a bundle
// (NST_TEST_BUNDLE, made by `nst bundle`) it paints and logs.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import test from 'node:test';
import { fileURLToPath } from 'node:url';
import { openBundle } from '../lib/bundle.mjs';
import { readImage } from '../lib/image.mjs';
import { checkReference } from '../lib/reference.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const script = path.join(here, '..', 'stylize.mjs');
const bundleDir = process.env.NST_TEST_BUNDLE;
const noBundle = bundleDir ? false : 'set NST_TEST_BUNDLE to a bundle made by nst bundle';
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'nst-node-cli-'));
test.after(() => fs.rmSync(tmp, { recursive: true, force: true }));

function run(...args) {
  return spawnSync(process.execPath, [script, ...args], { encoding: 'utf8' });
}

function expectInputError(r, pattern) {
  assert.equal(r.status, 2, r.stderr);
  const lines = r.stderr.trim().split('\n');
  assert.equal(lines.length, 1, r.stderr);
  assert.match(lines[0], /^stylize\.mjs: error: /);
  assert.match(lines[0], pattern);
}

test('bad command lines exit 2 with one line', () => {
  expectInputError(run('a.png', 'b.png', '-o', path.join(tmp, 'o.png')), /--bundle DIR is required/);
  expectInputError(run('--bundle', path.join(tmp, 'none'), 'a.png', 'b.png', '-o', path.join(tmp, 'o.png')),
    /no such bundle directory/);
  expectInputError(run('--bundle', tmp, 'a.png', 'b.png', '-o', path.join(tmp, 'o.png')), /no manifest\.json/);
  expectInputError(run('--bundle', tmp, 'a.png', '-o', path.join(tmp, 'o.png')), /give CONTENT and STYLE/);
  expectInputError(run('--bundle', tmp, 'a.png', 'b.png', '-o', path.join(tmp, 'o.jpg')), /must be a \.png file/);
  expectInputError(run('--bundle', tmp, 'a.png', 'b.png', '-o', path.join(tmp, 'o.png'), '--size', 'x'), /--size must be a whole number/);
  expectInputError(run('--bundle', tmp, 'a.png', 'b.png', '-o', path.join(tmp, 'o.png'), '--calibration-size', '1.5'),
    /--calibration-size must be a whole number/);
  expectInputError(run('--bundle', tmp, 'a.png', 'b.png', '-o', path.join(tmp, 'no', 'o.png')), /does not exist/);
  expectInputError(run('--bundle', tmp, 'a.png', 'b.png', '-o', path.join(tmp, 'o.png'), '--bogus'), /Unknown option/);
  fs.writeFileSync(path.join(tmp, 'manifest.json'), '{"format": "something else"}');
  expectInputError(run('--bundle', tmp, 'a.png', 'b.png', '-o', path.join(tmp, 'o.png')), /not an nst bundle manifest/);
});

test('the bundle reproduces its reference case', { skip: noBundle }, async () => {
  const { worst, limits, ok } = await checkReference(await openBundle(bundleDir));
  assert.ok(ok, JSON.stringify({ worst, limits }));
});

test('missing or unreadable images with a real bundle exit 2', { skip: noBundle }, () => {
  const ref = path.join(bundleDir, 'reference', 'style.png');
  expectInputError(run('--bundle', bundleDir, path.join(tmp, 'gone.png'), ref, '-o', path.join(tmp, 'o.png')), /gone\.png: no such file/);
  fs.writeFileSync(path.join(tmp, 'junk.png'), 'junk');
  expectInputError(run('--bundle', bundleDir, path.join(tmp, 'junk.png'), ref, '-o', path.join(tmp, 'o.png')), /cannot decode/);
  expectInputError(run('--bundle', bundleDir, ref, ref, '-o', path.join(tmp, 'o.png'), '--size', '3'), /too small/);
});

test('paints the reference images: PNG of the content size, log with nst stylize --log columns', { skip: noBundle }, () => {
  const out = path.join(tmp, 'out.png');
  const log = path.join(tmp, 'log.csv');
  const ref = (name) => path.join(bundleDir, 'reference', name);
  const r = run('--bundle', bundleDir, ref('content.png'), ref('style.png'), '-o', out, '--size', '48',
    '--style-size', '40', '--iterations', '4', '--log', log);
  assert.equal(r.status, 0, r.stderr);
  const img = readImage(out);
  const content = readImage(ref('content.png'));
  assert.deepEqual([img.width, img.height], [content.width, content.height]);
  const rows = fs.readFileSync(log, 'utf8').trim().split('\n');
  assert.equal(rows[0], 'evaluation,seconds,loss,content,style,tv,scale');
  assert.equal(rows.length, 5);
  const first = rows[1].split(',').map(Number);
  assert.equal(first[6], Math.min(content.width, content.height)); // the scale column: the smaller edge, px
  assert.ok(Math.abs(first[2] - (first[3] + first[4] + first[5])) <= 1e-6 * first[2]);
  assert.equal(first[3], 0); // the start point is the content image: no content loss
});

test('--calibration-size: the tv term scales by k = pixels(N) / pixels(size), the style term not', { skip: noBundle }, () => {
  const ref = (name) => path.join(bundleDir, 'reference', name);
  const firstRow = (n) => {
    const log = path.join(tmp, `cal${n}.csv`);
    const r = run('--bundle', bundleDir, ref('content.png'), ref('style.png'), '-o', path.join(tmp, `cal${n}.png`),
      '--size', '48', '--style-size', '40', '--iterations', '1', '--calibration-size', String(n), '--log', log);
    assert.equal(r.status, 0, r.stderr);
    return fs.readFileSync(log, 'utf8').trim().split('\n')[1].split(',').map(Number);
  };
  const raw = firstRow(0);
  const cal = firstRow(96); // the 64 x 48 content: 128 x 96 at 96 px against 64 x 48 at 48 px, k = 4
  assert.ok(raw[5] > 0);
  assert.ok(Math.abs(cal[5] - 4 * raw[5]) <= 1e-6 * cal[5], `${cal[5]} vs 4 x ${raw[5]}`);
  assert.equal(cal[4], raw[4]);
});

test('Ctrl-C ends the run with exit 130 and the best image so far', { skip: noBundle }, async () => {
  const { spawn } = await import('node:child_process');
  const out = path.join(tmp, 'interrupted.png');
  const ref = (name) => path.join(bundleDir, 'reference', name);
  const child = spawn(process.execPath, [script, '--bundle', bundleDir, ref('content.png'), ref('style.png'), '-o', out,
    '--size', '48', '--style-size', '40', '--iterations', '1000000', '--log', path.join(tmp, 'interrupted.csv')]);
  let stderr = '';
  child.stderr.on('data', (d) => { stderr += d; });
  await new Promise((resolve) => setTimeout(resolve, 4000));
  child.kill('SIGINT');
  const code = await new Promise((resolve) => child.on('close', resolve));
  assert.equal(code, 130, stderr);
  assert.match(stderr, /interrupted after \d+ evaluations; saved the best image so far/);
  const img = readImage(out);
  assert.deepEqual([img.width, img.height], [64, 48]);
  const rows = fs.readFileSync(path.join(tmp, 'interrupted.csv'), 'utf8').trim().split('\n');
  assert.ok(rows.length > 2);
});
