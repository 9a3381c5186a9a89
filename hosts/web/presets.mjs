// The page's preset menu, from a bundle's manifest and nst's presets (/presets.json); plain JavaScript, no DOM.
//
// A bundle is built for one problem, but its weights are objective inputs (manifest.weights), so another
// preset runs on the same models when its layers are the bundle's taps: its content layer is the bundle's content
// layer and each of its style layers is one of the bundle's style layers (a bundle style layer it lacks gets weight
// 0). Its style weights are multiplied by the bundle's problem.style_scale, as `nst bundle --preset` would do. The
// menu lists the bundle's own preset (with the manifest's exact weights) and every preset of /presets.json that fits;
// one that does not fit is listed disabled, with the reason.

/** {name: {weights: {objective input: value}, styleSize, size, fits, why}} for the bundle's preset and the others.
 * manifest: the bundle's; table: /presets.json's "presets" (null: the bundle's own preset only). */
export function presetChoices(manifest, table) {
  const problem = manifest.problem;
  const own = problem.preset || 'bundle';
  const ownWeights = Object.fromEntries(manifest.weights.map((w) => [w.input, w.value]));
  const choices = { [own]: { weights: ownWeights, styleSize: problem.style_size, size: problem.size, fits: true, own: true } };
  for (const [name, p] of Object.entries(table || {})) {
    if (name === own) continue;
    const weights = {};
    let why = null;
    for (const w of manifest.weights) {
      if (w.term === 'content') {
        if (p.content_layer !== w.layer) why = `content layer ${p.content_layer}, the bundle's is ${w.layer}`;
        weights[w.input] = p.content_weight;
      } else if (w.term === 'style') {
        const i = p.style_layers.indexOf(w.layer);
        weights[w.input] = i < 0 ? 0 : p.style_weights[i] * problem.style_scale;
      } else if (w.term === 'tv') {
        weights[w.input] = p.tv_weight;
      }
    }
    const missing = p.style_layers.filter((k) => !manifest.weights.some((w) => w.term === 'style' && w.layer === k));
    if (missing.length) why = `style layer(s) ${missing.join(', ')} not in the bundle`;
    if (!manifest.weights.some((w) => w.term === 'content') && p.content_weight) why = 'the bundle has no content term';
    choices[name] = { weights, styleSize: p.style_size, size: p.image_size, fits: why === null, why };
  }
  return choices;
}
