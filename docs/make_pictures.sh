#!/usr/bin/env bash
# Makes the README's pictures of the artist controls: each panel is one `nst stylize` output (192 px, the default
# 200 L-BFGS evaluations, starry_night's preset), joined side by side into one JPEG per control.
#   NST=.venv/bin/nst docs/make_pictures.sh      (run from the repository root; ../shared/images must exist)
set -euo pipefail
NST=${NST:-nst}
IMG=../shared/images
OUT=out/pictures
mkdir -p "$OUT"
run() { name=$1; shift; "$NST" stylize "$@" -o "$OUT/$name.png"; }

run colors_off      $IMG/tubingen.jpg $IMG/starry_night.jpg
run colors_lum      $IMG/tubingen.jpg $IMG/starry_night.jpg --original-colors luminance
run colors_match    $IMG/tubingen.jpg $IMG/starry_night.jpg --original-colors match
run blend_starry    $IMG/tubingen.jpg $IMG/starry_night.jpg
run blend_both      $IMG/tubingen.jpg $IMG/starry_night.jpg $IMG/the_scream.jpg --style-blend 1,1
run blend_scream    $IMG/tubingen.jpg $IMG/the_scream.jpg
run pool_max        $IMG/tubingen.jpg $IMG/starry_night.jpg --pooling max
run pool_avg        $IMG/tubingen.jpg $IMG/starry_night.jpg --pooling avg

join() {  # join OUT.jpg IN.png ...: side by side, 4 px white gaps, JPEG quality 90
  out=$1; shift
  python3 - "$out" "$@" <<'PY'
import sys
from PIL import Image
out, names = sys.argv[1], sys.argv[2:]
ims = [Image.open(n).convert("RGB") for n in names]
w, h = sum(i.width for i in ims) + 4 * (len(ims) - 1), max(i.height for i in ims)
canvas, x = Image.new("RGB", (w, h), "white"), 0
for i in ims:
    canvas.paste(i, (x, 0))
    x += i.width + 4
canvas.save(out, quality=90)
PY
}
join docs/original_colors.jpg $OUT/colors_off.png $OUT/colors_lum.png $OUT/colors_match.png
join docs/style_blend.jpg $OUT/blend_starry.png $OUT/blend_both.png $OUT/blend_scream.png
join docs/pooling.jpg $OUT/pool_max.png $OUT/pool_avg.png
ls -l docs/*.jpg
