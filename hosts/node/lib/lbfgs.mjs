// L-BFGS over an async objective, the rule of nst_core.optim.lbfgs (read that docstring for the why):
//   direction d = -H g by the two-loop recursion over the last `history` pairs (s, y), H0 = gamma I with
//   gamma = s'y / y'y of the newest pair; pairs kept in float32; a pair is stored only if s'y > curvatureEps and
//   s'y > eps32 * y'y;
//   with a box: variables at a bound whose gradient points outward are held (gradient and direction zeroed there),
//   every trial point is clipped onto the box, and s is the step actually taken;
//   trial step t = lr * min(1, 1 / sum|g|) from an empty memory, else lr; accepted when
//   f(trial) <= f + c1 * min(g's, 0) (Armijo), else t shrinks to the minimum of the quadratic through f, the slope and
//   f(trial), kept in [0.1 t, 0.5 t]; after maxBacktracks rejections the memory is dropped.
// The budget counts objective evaluations. The iterate and gradient are float64; dot products are float64 sums
// (NumPy's float32 pairs use float32 BLAS dots: the two differ in rounding only). memoryDtype 'float64' keeps the
// pairs and the two-loop in float64, as nst_core.optim.lbfgs(memory_dtype='float64') does.
// No imports: it runs in Node.js and in a browser (hosts/web), `performance` being a global in both.

const EPS32 = 2 ** -23;

class BudgetSpent extends Error {}
class NonFinite extends Error {}
class Interrupted extends Error {}

// One function per array type, so that each stays monomorphic for the JIT (a shared one ran 3x slower).
function dot64(a, b) {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i] * b[i];
  return s;
}

function dotMem(a, b) {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i] * b[i];
  return s;
}

function axpyMem(alpha, x, y) { // y += alpha * x
  for (let i = 0; i < y.length; i++) y[i] += alpha * x[i];
}

function anyNonzero(a) {
  for (let i = 0; i < a.length; i++) if (a[i] !== 0) return true;
  return false;
}

/**
 * Minimise `objective` from x0 (Float64Array), spending at most `budget` evaluations.
 * objective(x: Float64Array, read-only) -> Promise<{loss: number, grad: Float64Array | Float32Array,
 * parts: {content, style, tv}}>.
 * options: lo, hi (Float64Array box, optional), history (20), lr (1), c1 (1e-4), maxBacktracks (10),
 * curvatureEps (0), memoryDtype ('float32' | 'float64'), callback(record, x), shouldStop() -> true to end the run early (status "interrupted").
 * Returns {x (best evaluated point), loss, parts, status: budget|converged|nonfinite|interrupted, message,
 * history: [{evaluation, seconds, loss, parts}], info}.
 */
export async function lbfgs(objective, x0, budget, options = {}) {
  const { lo = null, hi = null, history = 20, lr = 1.0, c1 = 1e-4, maxBacktracks = 10, curvatureEps = 0.0,
    memoryDtype = 'float32', callback = null, shouldStop = null } = options;
  if (memoryDtype !== 'float32' && memoryDtype !== 'float64') throw new RangeError(`memoryDtype must be float32 or float64, got ${memoryDtype}`);
  const Mem = memoryDtype === 'float64' ? Float64Array : Float32Array;
  const eps = memoryDtype === 'float64' ? Number.EPSILON : EPS32;
  const n = x0.length;
  const box = lo !== null && hi !== null;
  let xc = Float64Array.from(x0);
  if (box) for (let i = 0; i < n; i++) xc[i] = Math.min(hi[i], Math.max(lo[i], xc[i]));
  const records = [];
  const best = { x: Float64Array.from(xc), loss: NaN, parts: {} };
  const t0 = performance.now();
  const info = { iterations: 0, pairs_stored: 0, pairs_skipped: 0, backtracks: 0, resets: 0, history, memory_dtype: memoryDtype };

  async function evaluate(x) {
    if (records.length >= budget) throw new BudgetSpent();
    if (shouldStop && shouldStop()) throw new Interrupted();
    const out = await objective(x);
    const loss = Number(out.loss);
    const g = new Float64Array(out.grad); // the typed-array constructor copies fast; .from iterates
    const record = { evaluation: records.length + 1, seconds: (performance.now() - t0) / 1000, loss,
      parts: { ...out.parts } };
    records.push(record);
    let finite = Number.isFinite(loss);
    for (let i = 0; finite && i < n; i++) finite = Number.isFinite(g[i]);
    if (finite && !(loss >= best.loss)) {
      best.x.set(x);
      best.loss = loss;
      best.parts = record.parts;
    }
    if (callback) callback(record, x);
    if (!finite) throw new NonFinite(`non-finite ${Number.isFinite(loss) ? 'gradient' : 'loss'} at evaluation ${record.evaluation}`);
    return [loss, g];
  }

  async function body() {
    const m = Math.max(1, Math.min(history, budget - 1));
    const slots = m + 1;
    const S = Array.from({ length: slots }, () => new Mem(n));
    const Y = Array.from({ length: slots }, () => new Mem(n));
    const rho = new Float64Array(slots);
    const alpha = new Float64Array(slots);
    let head = 0;
    let count = 0;
    let gamma = 1.0;
    let fresh = true;
    let xt = new Float64Array(n);
    const dm = new Mem(n);
    const d = new Float64Array(n);
    const s = new Float64Array(n);
    const y = new Float64Array(n);
    const free = new Float32Array(n);
    let [f, g] = await evaluate(xc);
    for (;;) {
      if (records.length >= budget) return null;
      if (!anyNonzero(g)) return ['converged', `converged: gradient exactly zero at evaluation ${records.length}`];
      if (box) {
        let any = false;
        for (let i = 0; i < n; i++) {
          const held = (xc[i] <= lo[i] && g[i] > 0) || (xc[i] >= hi[i] && g[i] < 0);
          free[i] = held ? 0 : 1;
          dm[i] = held ? 0 : -g[i];
          any = any || dm[i] !== 0;
        }
        if (!any) return ['converged', `converged: projected gradient exactly zero at evaluation ${records.length}`];
      } else {
        for (let i = 0; i < n; i++) dm[i] = -g[i];
      }
      const order = [];
      for (let j = 0; j < count; j++) order.push(((head - 1 - j) % slots + slots) % slots);
      for (const i of order) {
        alpha[i] = rho[i] * dotMem(S[i], dm);
        axpyMem(-alpha[i], Y[i], dm);
      }
      if (count) for (let k = 0; k < n; k++) dm[k] *= gamma;
      for (let j = order.length - 1; j >= 0; j--) {
        const i = order[j];
        axpyMem(alpha[i] - rho[i] * dotMem(Y[i], dm), S[i], dm);
      }
      if (box && count) for (let k = 0; k < n; k++) dm[k] *= free[k];
      d.set(dm);
      const gtd = dot64(g, d);
      if (!(gtd < 0)) {
        if (count === 0) return ['converged', `no progress possible: -grad is not a descent direction (g'd = ${gtd})`];
        count = 0; gamma = 1.0; fresh = true; info.resets++;
        continue;
      }
      let absg = 0;
      for (let k = 0; k < n; k++) absg += Math.abs(g[k]);
      let t = fresh ? lr * Math.min(1.0, 1.0 / absg) : lr;
      let accepted = false, zeroStep = false, ft = NaN, gt = null;
      for (let tr = 0; tr <= maxBacktracks; tr++) {
        let moved = false;
        for (let k = 0; k < n; k++) {
          let v = d[k] * t + xc[k];
          if (box) v = Math.min(hi[k], Math.max(lo[k], v));
          xt[k] = v;
          s[k] = v - xc[k];
          moved = moved || s[k] !== 0;
        }
        if (!moved) { zeroStep = true; break; }
        [ft, gt] = await evaluate(xt);
        const dec = dot64(g, s);
        if (ft <= f + c1 * Math.min(dec, 0)) { accepted = true; break; }
        info.backtracks++;
        if (records.length >= budget) return null;
        const slope = dec / t;
        const curv = ft - f - slope * t;
        const tNew = (slope < 0 && curv > 0) ? -slope * t * t / (2 * curv) : 0.5 * t;
        t = Math.min(Math.max(tNew, 0.1 * t), 0.5 * t);
      }
      if (!accepted) {
        if (fresh) {
          const why = zeroStep ? 'the projected steepest-descent step is zero'
            : `${maxBacktracks + 1} trials along steepest descent did not decrease the loss`;
          return ['converged', `no progress possible: ${why} (evaluation ${records.length})`];
        }
        count = 0; gamma = 1.0; fresh = true; info.resets++;
        continue;
      }
      for (let k = 0; k < n; k++) y[k] = gt[k] - g[k];
      const ys = dot64(s, y);
      const yy = dot64(y, y);
      if (ys > curvatureEps && ys > eps * yy) {
        S[head].set(s);
        Y[head].set(y);
        rho[head] = 1.0 / ys;
        gamma = ys / yy;
        head = (head + 1) % slots;
        count = Math.min(count + 1, m);
        info.pairs_stored++;
      } else {
        info.pairs_skipped++;
      }
      [xc, xt] = [xt, xc];
      f = ft;
      g = gt;
      fresh = false;
      info.iterations++;
    }
  }

  let status, message;
  try {
    const ended = await body();
    [status, message] = ended || ['budget', `evaluation budget of ${budget} spent`];
  } catch (e) {
    if (e instanceof BudgetSpent) [status, message] = ['budget', `evaluation budget of ${budget} spent`];
    else if (e instanceof NonFinite) [status, message] = ['nonfinite', `stopped: ${e.message}; returning the best finite point`];
    else if (e instanceof Interrupted) [status, message] = ['interrupted', `interrupted after ${records.length} evaluations; returning the best point`];
    else throw e;
  }
  return { x: best.x, loss: best.loss, parts: best.parts, status, message, history: records, info };
}
