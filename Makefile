# Two entry points on a fresh machine (see README.md):
#   make demo   - set up .venv, export the model from ../shared/weights, paint Tübingen in Starry Night's style
#   make test   - set up .venv and the Node and browser hosts' packages (npm ci from hosts/node and hosts/web's
#                 package-lock.json), run the tests (the browser test needs Debian's chromium: .ci/run installs it)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
SHARED ?= ../shared
NODE_HOST := hosts/node
WEB_HOST  := hosts/web

.PHONY: demo test bench

$(BIN)/nst: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch==2.13.0 first: any other torch request would download a multi-GB CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[cpu,export,dev,jobs,video,serve]'
	touch $@

demo: $(BIN)/nst
	$(BIN)/nst export --weights $(SHARED)/weights/squeezenet1_1_imagenet.npz
	mkdir -p out
	$(BIN)/nst stylize -o out/stylized.png

# The Node host's packages, exactly as locked; its .npmrc turns off install scripts (nothing from outside npm).
$(NODE_HOST)/node_modules/.package-lock.json: $(NODE_HOST)/package.json $(NODE_HOST)/package-lock.json
	cd $(NODE_HOST) && npm ci --no-audit --no-fund

# The browser host's packages: onnxruntime-web (its .wasm / .mjs are served from the page's origin) and
# playwright-core (drives the system's chromium; it never downloads a browser, and install scripts are off).
$(WEB_HOST)/node_modules/.package-lock.json: $(WEB_HOST)/package.json $(WEB_HOST)/package-lock.json
	cd $(WEB_HOST) && npm ci --no-audit --no-fund

# pytest runs the Node host's own tests too (tests/test_node_host.py runs `node --test`) and the browser host's
# end-to-end test (tests/test_web_host.py, headless /usr/bin/chromium)
test: $(BIN)/nst $(NODE_HOST)/node_modules/.package-lock.json $(WEB_HOST)/node_modules/.package-lock.json
	$(BIN)/python -m pytest -q

bench: $(BIN)/nst
	$(BIN)/python bench/bench_vjp.py
