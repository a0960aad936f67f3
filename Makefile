# Two commands matter: `make run` and `make test`. Both create .venv and install on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
CHECKPOINT := checkpoints/cmanp-gp-rbf.safetensors

AND_CHECKPOINT := checkpoints/cmanp-and-gp-rbf.safetensors
GENERAL_CHECKPOINT := checkpoints/cmanp-gp-general.safetensors
MNIST_CHECKPOINT := checkpoints/cmanp-mnist.safetensors

.PHONY: install run test lint train train-and train-general train-mnist train-events eval eval-and eval-general eval-events eval-mnist bench bench-quick bench-setup bench-memory plot plot-and plot-general plot-mnist plot-events clean

# pip would byte-compile all ~14,000 modules it installs, on one core, about half of the install's
# time; tools/warm_bytecode.py writes the .pyc files of the ~4,000 the project imports (its docstring).
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --no-compile -e ".[dev]"
	PYTHONDONTWRITEBYTECODE= $(PY) -m tools.warm_bytecode
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(PY) -m service

# Two workers, a test file each at a time (files share their module fixtures: servers, Redis).
test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile

# pip-audit checks every installed distribution against PyPI's advisory data (needs PyPI's JSON API);
# torch's local "+cpu" build and this package itself are not on PyPI, so they are listed as skipped.
lint: $(STAMP)
	$(PY) -m ruff check model service tests bench examples tools
	$(PY) -m ruff format --check model service tests bench examples tools
	$(PY) -m pip_audit --skip-editable --progress-spinner off

train: $(STAMP)
	$(PY) -m model.train --config configs/gp-rbf.json --out runs/gp-rbf --resume

# The joint head (CMANP-AND), trained alone on the shipped CMANP's frozen encoder and decoder.
train-and: $(STAMP)
	$(PY) -m model.train --config configs/gp-rbf-and.json --init-from $(CHECKPOINT) --out runs/gp-rbf-and --resume

# The default model: the broad prior, fine-tuned from the paper model's weights (its card has the recipe).
train-general: $(STAMP)
	$(PY) -m model.train --config configs/gp-general.json --init-from $(CHECKPOINT) --warm-start \
		--out runs/gp-general --resume --compile false --precision fp32

GENERAL_CARD_JSON := $(GENERAL_CHECKPOINT:.safetensors=.json)
eval-general: $(STAMP)
	$(PY) -m model.evaluate --checkpoint $(GENERAL_CHECKPOINT) --kernel rbf --out runs/eval-general-rbf.json \
		--card-json $(GENERAL_CARD_JSON)
	$(PY) -m model.evaluate --checkpoint $(GENERAL_CHECKPOINT) --kernel matern --out runs/eval-general-matern.json \
		--card-json $(GENERAL_CARD_JSON)
	$(PY) -m model.evaluate --checkpoint $(GENERAL_CHECKPOINT) --kernel broad --context-sizes 10,50,200,1000 \
		--num-tasks 256 --out runs/eval-general-broad.json --card-json $(GENERAL_CARD_JSON)
	$(PY) -m bench.real_data --model cmanp-gp-general --checkpoint $(GENERAL_CHECKPOINT) --y-transform auto

plot-general: $(STAMP)
	$(PY) -m bench.real_data_plot --checkpoint $(GENERAL_CHECKPOINT) --out checkpoints/cmanp-gp-general.png

CARD_JSON := $(CHECKPOINT:.safetensors=.json)
eval: $(STAMP)
	$(PY) -m model.evaluate --checkpoint $(CHECKPOINT) --kernel rbf --out runs/eval-rbf.json --card-json $(CARD_JSON)
	$(PY) -m model.evaluate --checkpoint $(CHECKPOINT) --kernel matern --out runs/eval-matern.json --card-json $(CARD_JSON)
	$(PY) -m model.evaluate --checkpoint $(CHECKPOINT) --context-sizes 10,50,100,200,500,1000 \
		--out runs/eval-streaming.json --card-json $(CARD_JSON)

# The event model (docs/MODEL.md, section 9): train on the Hawkes prior, score beside the true process and a
# per-sequence MLE fit (model/evaluate_events.py; ~3 min on 2 cores), plot its intensity beside the true one.
EVENT_CHECKPOINT := checkpoints/cmhp-hawkes-exp.safetensors
train-events: $(STAMP)
	$(PY) -m model.train --config configs/hawkes-exp.json --out runs/cmhp --resume

plot-events: $(STAMP)
	$(PY) -m model.plot_events --checkpoint $(EVENT_CHECKPOINT) --out checkpoints/cmhp-hawkes-exp.png

eval-events: $(STAMP)
	$(PY) -m model.evaluate --checkpoint $(EVENT_CHECKPOINT) --out runs/eval-cmhp-hawkes-exp.json \
		--card-json $(EVENT_CHECKPOINT:.safetensors=.json)

# wrk drives the service benchmark (Debian package; needs root or sudo the first time).
bench-setup:
	@command -v wrk >/dev/null 2>&1 || { if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
		$$SUDO apt-get update -q && $$SUDO apt-get install -y -q wrk; }

# Every benchmark (about 10 minutes on a quiet 2-core machine): bench/RESULTS.md, bench/*.png, bench/out/*.json
bench: $(STAMP) bench-setup
	$(PY) -m bench

# Small versions of every benchmark (under 2 minutes), output in bench/out/quick/; run by the test suite.
bench-quick: $(STAMP) bench-setup
	$(PY) -m bench --quick --jobs 3

AND_CARD_JSON := $(AND_CHECKPOINT:.safetensors=.json)
eval-and: $(STAMP)
	$(PY) -m model.evaluate --checkpoint $(AND_CHECKPOINT) --kernel rbf --joint --out runs/eval-and-rbf.json \
		--card-json $(AND_CARD_JSON)
	$(PY) -m model.evaluate --checkpoint $(AND_CHECKPOINT) --kernel matern --joint --out runs/eval-and-matern.json \
		--card-json $(AND_CARD_JSON)
	$(PY) -m model.evaluate_joint --checkpoint $(AND_CHECKPOINT) --kernel rbf --out runs/eval-joint-rbf.json \
		--card-json $(AND_CARD_JSON)
	$(PY) -m model.evaluate_joint --checkpoint $(AND_CHECKPOINT) --kernel matern --out runs/eval-joint-matern.json \
		--card-json $(AND_CARD_JSON)

bench-memory: $(STAMP)
	$(PY) -m bench.constant_memory --checkpoint $(CHECKPOINT)

plot: $(STAMP)
	$(PY) -m model.plot --checkpoint $(CHECKPOINT) --out checkpoints/cmanp-gp-rbf.png

plot-and: $(STAMP)
	$(PY) -m model.plot --checkpoint $(AND_CHECKPOINT) --samples 5 --out checkpoints/cmanp-and-gp-rbf.png

# Image completion on MNIST digits (docs/MODEL.md, section 10): train, score beside a fitted GP (digits,
# faces), plot. The evaluation takes a few minutes on 2 cores, most of it the GP's fits.
# From scratch, with a variance-preserving init of the embeddings and the beta-NLL (configs/mnist.json):
# under torch's init a 2-D model sat at the mean digit, and under the plain NLL its mean hardly reads
# the context (checkpoints/HISTORY.md, cmanp-mnist).
train-mnist: $(STAMP)
	$(PY) -m model.train --config configs/mnist.json --out runs/mnist5 --resume

MNIST_CARD_JSON := $(MNIST_CHECKPOINT:.safetensors=.json)
eval-mnist: $(STAMP)
	$(PY) -m model.evaluate --checkpoint $(MNIST_CHECKPOINT) --data mnist --threads 1 --out runs/eval-mnist.json \
		--card-json $(MNIST_CARD_JSON)

plot-mnist: $(STAMP)
	$(PY) -m model.plot_images --checkpoint $(MNIST_CHECKPOINT) --out checkpoints/cmanp-mnist.png

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
