#!/usr/bin/env bash
# Makes the README's opening picture docs/readme.jpg: the photo, the three CS231n presets painted on it by
# `nst stylize` (192 px, the default 200 L-BFGS evaluations) and a feature inversion, side by side.
#   NST=.venv/bin/nst docs/make_readme_picture.sh      (run from the repository root; ../shared/images must exist)
set -euo pipefail
NST=${NST:-nst}
PY=${PY:-.venv/bin/python}   # with Pillow
IMG=../shared/images
OUT=out/pictures
mkdir -p "$OUT"
"$NST" stylize $IMG/tubingen.jpg $IMG/starry_night.jpg --preset starry_night -o "$OUT/readme_starry.png"
"$NST" stylize $IMG/tubingen.jpg $IMG/the_scream.jpg --preset scream -o "$OUT/readme_scream.png"
"$NST" stylize $IMG/tubingen.jpg $IMG/composition_vii.jpg --preset composition_vii -o "$OUT/readme_kandinsky.png"
"$NST" invert $IMG/tubingen.jpg --seed 0 -o "$OUT/readme_inversion.png"
"$PY" - "$IMG/tubingen.jpg" "$OUT"/readme_{starry,scream,kandinsky,inversion}.png <<'PY'
import sys
from PIL import Image
ims = [Image.open(n).convert("RGB") for n in sys.argv[1:]]
h = min(i.height for i in ims[1:])
ims = [i.resize((round(i.width * h / i.height), h), Image.Resampling.LANCZOS) if i.height != h else i for i in ims]
canvas, x = Image.new("RGB", (sum(i.width for i in ims) + 4 * (len(ims) - 1), h), "white"), 0
for i in ims:
    canvas.paste(i, (x, 0))
    x += i.width + 4
canvas.save("docs/readme.jpg", quality=90)
PY
ls -l docs/readme.jpg
