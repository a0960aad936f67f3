# Two commands matter: `make run` and `make test`. Both create .venv and install on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
CHECKPOINT := checkpoints/cmanp-gp-rbf.safetensors

AND_CHECKPOINT := checkpoints/cmanp-and-gp-rbf.safetensors

.PHONY: install run test lint train train-and eval eval-and bench-memory plot plot-and clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(PY) -m service

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(PY) -m ruff check model service tests bench examples
	$(PY) -m ruff format --check model service tests bench examples

train: $(STAMP)
	$(PY) -m model.train --config configs/gp-rbf.json --out runs/gp-rbf --resume

# The joint head (CMANP-AND), trained alone on the shipped CMANP's frozen encoder and decoder.
train-and: $(STAMP)
	$(PY) -m model.train --config configs/gp-rbf-and.json --init-from $(CHECKPOINT) --out runs/gp-rbf-and --resume

CARD_JSON := $(CHECKPOINT:.safetensors=.json)
eval: $(STAMP)
	$(PY) -m model.evaluate --checkpoint $(CHECKPOINT) --kernel rbf --out runs/eval-rbf.json --card-json $(CARD_JSON)
	$(PY) -m model.evaluate --checkpoint $(CHECKPOINT) --kernel matern --out runs/eval-matern.json --card-json $(CARD_JSON)
	$(PY) -m model.evaluate --checkpoint $(CHECKPOINT) --context-sizes 10,50,100,200,500,1000 \
		--out runs/eval-streaming.json --card-json $(CARD_JSON)

AND_CARD_JSON := $(AND_CHECKPOINT:.safetensors=.json)
eval-and: $(STAMP)
	$(PY) -m model.evaluate --checkpoint $(AND_CHECKPOINT) --kernel rbf --joint --out runs/eval-and-rbf.json \
		--card-json $(AND_CARD_JSON)
	$(PY) -m model.evaluate --checkpoint $(AND_CHECKPOINT) --kernel matern --joint --out runs/eval-and-matern.json \
		--card-json $(AND_CARD_JSON)

bench-memory: $(STAMP)
	$(PY) -m bench.constant_memory --checkpoint $(CHECKPOINT)

plot: $(STAMP)
	$(PY) -m model.plot --checkpoint $(CHECKPOINT) --out checkpoints/cmanp-gp-rbf.png

plot-and: $(STAMP)
	$(PY) -m model.plot --checkpoint $(AND_CHECKPOINT) --samples 5 --out checkpoints/cmanp-and-gp-rbf.png

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
