// Where the Node host's time goes (run by bench/bench_bundle.py's timing section):
//   node bench/node_time_split.mjs BUNDLE CONTENT STYLE [SIZE] [EVALS]
// Prints JSON: median ms of one objective.onnx call (20 calls after a warm-up), and for one L-BFGS run of EVALS
// evaluations the ms per evaluation spent outside the objective (the optimizer's own time).
import { computeTargets, makeObjective, openBundle, pixelBox } from '../hosts/node/lib/bundle.mjs';
import { preprocess, readImage } from '../hosts/node/lib/image.mjs';
import { lbfgs } from '../hosts/node/lib/lbfgs.mjs';

const [dir, contentFile, styleFile, sizeText = '192', evalsText = '200'] = process.argv.slice(2);
const size = Number(sizeText);
const evals = Number(evalsText);
const b = await openBundle(dir);
const prep = b.manifest.preprocessing;
const content = preprocess(readImage(contentFile), size, prep);
const targets = await computeTargets(b, content, preprocess(readImage(styleFile), size, prep));
const objective = makeObjective(b, targets, content.dims);
const x = Float64Array.from(content.data);
await objective(x);
const calls = [];
for (let i = 0; i < 20; i++) {
  const t = performance.now();
  await objective(x);
  calls.push(performance.now() - t);
}
calls.sort((p, q) => p - q);
let inside = 0;
const timed = async (y) => {
  const t = performance.now();
  const out = await objective(y);
  inside += performance.now() - t;
  return out;
};
const { lo, hi } = pixelBox(b.manifest, content.dims);
const t0 = performance.now();
const r = await lbfgs(timed, x, evals, { lo, hi });
const total = performance.now() - t0;
console.log(JSON.stringify({ objective_ms: calls[10], optimizer_ms_per_eval: (total - inside) / r.history.length,
  evaluations: r.history.length, pixels: content.data.length }));
