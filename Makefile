# Two entry points on a fresh machine (see README.md):
#   make demo   - set up .venv, export the model from ../shared/weights, paint Tübingen in Starry Night's style
#   make test   - set up .venv and the Node host's packages (npm ci from hosts/node/package-lock.json), run the tests
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
SHARED ?= ../shared
NODE_HOST := hosts/node

.PHONY: demo test bench

$(BIN)/nst: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch==2.13.0 first: any other torch request would download a multi-GB CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[cpu,export,dev]'
	touch $@

demo: $(BIN)/nst
	$(BIN)/nst export --weights $(SHARED)/weights/squeezenet1_1_imagenet.npz
	mkdir -p out
	$(BIN)/nst stylize -o out/stylized.png

# The Node host's packages, exactly as locked; its .npmrc turns off install scripts (nothing from outside npm).
$(NODE_HOST)/node_modules/.package-lock.json: $(NODE_HOST)/package.json $(NODE_HOST)/package-lock.json
	cd $(NODE_HOST) && npm ci --no-audit --no-fund

# pytest runs the Node host's own tests too (tests/test_node_host.py runs `node --test`)
test: $(BIN)/nst $(NODE_HOST)/node_modules/.package-lock.json
	$(BIN)/python -m pytest -q

bench: $(BIN)/nst
	$(BIN)/python bench/bench_vjp.py
