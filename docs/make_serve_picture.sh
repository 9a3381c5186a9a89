#!/usr/bin/env bash
# Makes docs/serve.jpg, the README's screenshot of the page of `nst serve` in the middle of a job: a server on
# 127.0.0.1 with a fresh --data directory, Tübingen and Starry Night chosen through the page's inputs in headless
# chromium (docs/serve_screenshot.mjs; playwright-core from hosts/web), 300 evaluations at 256 px, the screenshot
# taken once half of them are done, then the job cancelled and the server stopped; saved as a JPEG (quality 80).
#   NST=.venv/bin/nst docs/make_serve_picture.sh   (from the repository root, after make test's npm ci in hosts/web)
set -euo pipefail
NST=${NST:-nst}
PY=${PY:-$(dirname "$(command -v "$NST")")/python}
TMP=$(mktemp -d)
SERVER=
trap '[ -n "$SERVER" ] && kill -TERM "$SERVER" 2>/dev/null && wait "$SERVER" 2>/dev/null; rm -rf "$TMP"' EXIT
PORT=$("$PY" -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
"$NST" serve --port "$PORT" --data "$TMP/data" > "$TMP/serve.log" 2>&1 &
SERVER=$!
URL="http://127.0.0.1:$PORT/"
for _ in $(seq 150); do curl -sf "${URL}v1/health" > /dev/null && break; sleep 0.2; done
curl -sf "${URL}v1/health" > /dev/null || { cat "$TMP/serve.log"; exit 1; }
node docs/serve_screenshot.mjs "$URL" ../shared/images/tubingen.jpg ../shared/images/starry_night.jpg "$TMP/page.png" 256 300 0.5
"$PY" -c "from PIL import Image; Image.open('$TMP/page.png').convert('RGB').save('docs/serve.jpg', quality=80, optimize=True)"
ls -l docs/serve.jpg
