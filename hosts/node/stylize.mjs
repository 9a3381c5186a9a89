#!/usr/bin/env node
// node hosts/node/stylize.mjs --bundle DIR CONTENT STYLE -o OUT.png [--size N] [--style-size N] [--calibration-size N]
//     [--iterations N] [--history M] [--memory float32|float64] [--log FILE.csv] [--threads N] [-q]
// Exit status: 0 ok, 2 bad input (one line on stderr), 3 diverged (best finite image saved),
// 130 interrupted (best image so far saved).
import fs from 'node:fs';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { HostError } from './lib/errors.mjs';
import { writeAtomic, writePng } from './lib/image.mjs';
import { logCsv, stylize } from './lib/stylize.mjs';

const USAGE = 'usage: node stylize.mjs --bundle DIR CONTENT STYLE -o OUT.png [--size N] [--style-size N] '
  + '[--calibration-size N] [--iterations N] [--history M] [--memory float32|float64] [--log FILE.csv] [--threads N] [-q]';

function whole(name, text) {
  if (text === undefined) return undefined;
  if (!/^\d+$/.test(text)) throw new HostError(`--${name} must be a whole number, got ${JSON.stringify(text)}`);
  return Number(text);
}

function checkOutput(file, what, ext) {
  if (path.extname(file).toLowerCase() !== ext) throw new HostError(`${file}: ${what} must be a ${ext} file`);
  const dir = path.dirname(path.resolve(file));
  if (!fs.existsSync(dir) || !fs.statSync(dir).isDirectory()) throw new HostError(`${file}: directory ${dir} does not exist`);
}

async function main(argv) {
  let parsed;
  try {
    parsed = parseArgs({ args: argv, allowPositionals: true, options: {
      bundle: { type: 'string' }, output: { type: 'string', short: 'o' }, size: { type: 'string' },
      'style-size': { type: 'string' }, 'calibration-size': { type: 'string' }, iterations: { type: 'string' }, history: { type: 'string' }, memory: { type: 'string' },
      log: { type: 'string' }, threads: { type: 'string' }, quiet: { type: 'boolean', short: 'q' },
      help: { type: 'boolean', short: 'h' } } });
  } catch (e) {
    throw new HostError(`${e.message.split('\n')[0]} (${USAGE})`);
  }
  const { values: v, positionals } = parsed;
  if (v.help) { console.log(USAGE); return 0; }
  if (!v.bundle) throw new HostError(`--bundle DIR is required (${USAGE})`);
  if (positionals.length !== 2) throw new HostError(`give CONTENT and STYLE images (${USAGE})`);
  if (!v.output) throw new HostError(`-o OUT.png is required (${USAGE})`);
  checkOutput(v.output, 'the output', '.png');
  if (v.memory !== undefined && v.memory !== 'float32' && v.memory !== 'float64') {
    throw new HostError(`--memory must be float32 or float64, got ${JSON.stringify(v.memory)}`);
  }
  if (v.log) checkOutput(v.log, 'the log', '.csv');
  for (const p of positionals) {
    if (path.resolve(p) === path.resolve(v.output)) throw new HostError(`${v.output}: would overwrite the input image`);
  }
  let stop = false;
  process.on('SIGINT', () => { stop = true; });
  const t0 = performance.now();
  const { rgb, width, height, result } = await stylize(v.bundle, positionals[0], positionals[1], {
    size: whole('size', v.size), styleSize: whole('style-size', v['style-size']),
    calibrationSize: whole('calibration-size', v['calibration-size']),
    iterations: whole('iterations', v.iterations), history: whole('history', v.history),
    threads: whole('threads', v.threads), memoryDtype: v.memory, shouldStop: () => stop });
  const seconds = (performance.now() - t0) / 1000;
  if (v.log) writeAtomic(v.log, logCsv(result, Math.min(width, height)));
  const saved = Number.isFinite(result.loss);
  if (saved) writePng(v.output, rgb, width, height);
  if (result.status === 'interrupted') {
    console.error(`stylize.mjs: interrupted after ${result.history.length} evaluations; ${saved ? `saved the best image so far to ${v.output}` : 'nothing saved'}`);
    return 130;
  }
  if (result.status === 'nonfinite') {
    console.error(`stylize.mjs: error: ${result.message}${saved ? `; saved the best finite image to ${v.output}` : ''}`);
    return 3;
  }
  if (!v.quiet) {
    const p = result.parts;
    console.log(`wrote ${v.output} (${width}x${height}): loss ${result.loss.toPrecision(6)} (content ${p.content.toPrecision(4)}, `
      + `style ${p.style.toPrecision(4)}, tv ${p.tv.toPrecision(4)}), ${result.history.length} evaluations (lbfgs), `
      + `${seconds.toFixed(1)} s`);
  }
  return 0;
}

main(process.argv.slice(2)).then((code) => { process.exitCode = code; }, (e) => {
  if (e instanceof HostError) {
    console.error(`stylize.mjs: error: ${e.message}`);
    process.exitCode = 2;
  } else {
    console.error(e);
    process.exitCode = 1;
  }
});
