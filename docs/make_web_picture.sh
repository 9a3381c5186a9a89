#!/usr/bin/env bash
# Makes docs/web_page.jpg, the README's screenshot of the browser host: a bundle made by `nst bundle`, served by
# `nst serve-web`, one 200-evaluation run at 256 px through the page's UI in headless chromium
# (hosts/web/test/screenshot.mjs), the PNG screenshot saved as a JPEG (quality 85).
#   NST=.venv/bin/nst docs/make_web_picture.sh   (from the repository root, after make test's npm ci in hosts/web)
set -euo pipefail
NST=${NST:-nst}
PY=${PY:-$(dirname "$(command -v "$NST")")/python}
TMP=$(mktemp -d)
SERVER=
trap 'kill "$SERVER" 2>/dev/null || true; rm -rf "$TMP"' EXIT
"$NST" bundle "$TMP/bundle" > /dev/null
"$NST" serve-web --bundle "$TMP/bundle" --port 0 > "$TMP/serve.log" 2>&1 &
SERVER=$!
for _ in $(seq 50); do grep -q serving "$TMP/serve.log" 2>/dev/null && break; sleep 0.2; done
URL=$(sed -n 's/^serving \(http[^ ]*\).*/\1/p' "$TMP/serve.log")
"$PY" -c "from nst_core.imageio import open_image; import sys
for n in ('tubingen', 'starry_night'): open_image(f'../shared/images/{n}.jpg').save(f'$TMP/{n}.png')"
(cd hosts/web && node test/screenshot.mjs "$URL" "$TMP/tubingen.png" "$TMP/starry_night.png" "$TMP/page.png")
"$PY" -c "from PIL import Image; Image.open('$TMP/page.png').convert('RGB').save('docs/web_page.jpg', quality=85)"
ls -l docs/web_page.jpg
