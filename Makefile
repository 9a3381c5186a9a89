# Two entry points on a fresh machine (see README.md):
#   make demo   - set up .venv, export the model from ../shared/weights, paint Tübingen in Starry Night's style
#   make test   - set up .venv and run the test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
SHARED ?= ../shared

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

test: $(BIN)/nst
	$(BIN)/python -m pytest -q

bench: $(BIN)/nst
	$(BIN)/python bench/bench_vjp.py
