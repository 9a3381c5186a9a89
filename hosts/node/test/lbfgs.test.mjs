// L-BFGS against hand-computed minimisers and the rules of nst_core.optim.lbfgs.
import assert from 'node:assert/strict';
import test from 'node:test';
import { lbfgs } from '../lib/lbfgs.mjs';

// f = 0.5 * sum a_i (x_i - c_i)^2: its minimiser in a box is clip(c, lo, hi) (separable).
function quadratic(a, c) {
  return async (x) => {
    let f = 0;
    const g = new Float64Array(x.length);
    for (let i = 0; i < x.length; i++) {
      const d = x[i] - c[i];
      f += 0.5 * a[i] * d * d;
      g[i] = a[i] * d;
    }
    return { loss: f, grad: g, parts: {} };
  };
}

test('box-constrained quadratic: reaches clip(c, lo, hi)', async () => {
  const n = 50;
  const a = Float64Array.from({ length: n }, (_, i) => 1 + (i % 7) * 3);
  const c = Float64Array.from({ length: n }, (_, i) => Math.sin(i) * 3);
  const lo = new Float64Array(n).fill(-1);
  const hi = new Float64Array(n).fill(2);
  const r = await lbfgs(quadratic(a, c), new Float64Array(n), 200, { lo, hi });
  for (let i = 0; i < n; i++) assert.ok(Math.abs(r.x[i] - Math.min(2, Math.max(-1, c[i]))) < 1e-6, `x[${i}] = ${r.x[i]}`);
  for (const rec of r.history) assert.ok(rec.loss >= r.loss);
});

test('Rosenbrock: reaches (1, 1) without bounds', async () => {
  const rosen = async (x) => {
    const [u, v] = x;
    return { loss: (1 - u) ** 2 + 100 * (v - u * u) ** 2,
      grad: Float64Array.of(-2 * (1 - u) - 400 * u * (v - u * u), 200 * (v - u * u)), parts: {} };
  };
  const r = await lbfgs(rosen, Float64Array.of(-1.2, 1), 300, { memoryDtype: 'float64' });
  assert.ok(Math.abs(r.x[0] - 1) < 1e-5 && Math.abs(r.x[1] - 1) < 1e-5, `x = ${r.x}`);
});

test('the first trial step is -g * min(1, 1 / sum|g|), and the budget is exact', async () => {
  const seen = [];
  const a = Float64Array.of(1, 2, 3);
  const c = Float64Array.of(1, -1, 0.5);
  const r = await lbfgs(quadratic(a, c), new Float64Array(3), 7, { callback: (rec, x) => seen.push(Array.from(x)) });
  // g(0) = -a * c = [-1, 2, -1.5], sum |g| = 4.5, t = 1 / 4.5
  const expected = [1 / 4.5, -2 / 4.5, 1.5 / 4.5];
  seen[1].forEach((v, i) => assert.ok(Math.abs(v - expected[i]) < 1e-15));
  assert.equal(r.history.length, 7);
  assert.equal(r.status, 'budget');
  assert.deepEqual(r.history.map((h) => h.evaluation), [1, 2, 3, 4, 5, 6, 7]);
});

test('a non-finite loss ends the run with the best finite point', async () => {
  let calls = 0;
  const inner = quadratic(Float64Array.of(1, 1), Float64Array.of(3, 3));
  const r = await lbfgs(async (x) => (++calls === 3 ? { loss: NaN, grad: new Float64Array(2), parts: {} } : inner(x)),
    Float64Array.of(0, 0), 10);
  assert.equal(r.status, 'nonfinite');
  assert.equal(r.history.length, 3);
  assert.equal(r.loss, Math.min(r.history[0].loss, r.history[1].loss));
});

test('shouldStop ends the run as interrupted, keeping the best point', async () => {
  let n = 0;
  const a = Float64Array.from({ length: 20 }, (_, i) => 1 + i * i);
  const c = new Float64Array(20).fill(1);
  const r = await lbfgs(quadratic(a, c), new Float64Array(20), 100, { callback: () => { n++; }, shouldStop: () => n >= 4 });
  assert.equal(r.status, 'interrupted');
  assert.equal(r.history.length, 4);
  assert.equal(r.loss, Math.min(...r.history.map((h) => h.loss)));
});

test('a zero gradient at the start converges at once', async () => {
  const r = await lbfgs(quadratic(Float64Array.of(1, 1), Float64Array.of(0, 0)), Float64Array.of(0, 0), 10);
  assert.equal(r.status, 'converged');
  assert.equal(r.history.length, 1);
});
