# Two commands do all set-up on a fresh machine:
#   make demo   - venv + install + dataset, then a 10x10 grid from the shipped model (samples/grid.png)
#   make test   - venv + install + dataset, then the test suite (what CI runs)
VENV    ?= .venv
PYTHON  ?= python3
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
DATASET := /usr/share/datasets/fashion-mnist
EMOJI_FONT := /usr/share/fonts/truetype/noto/NotoColorEmoji.ttf
CLDR_EN := /usr/share/unicode/cldr/common/annotations/en.xml

.PHONY: demo test setup dataset train-quick clean

demo: setup dataset
	$(PY) -m diffusion generate --sampler euler-a --out samples/grid.png

test: setup dataset
	$(PY) -m pytest -q

setup: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e ".[dev]"
	$(PY) -c "import torch, torchvision, diffusers, accelerate; print('installed torch', torch.__version__, 'torchvision', torchvision.__version__)"
	touch $(STAMP)

# Offline data from Debian's packages (offline mirrors); needs root or sudo. Each is skipped if
# present: Fashion-MNIST; the emoji font and CLDR annotations of the captioned emoji dataset.
dataset:
	@missing=""; \
	{ [ -d $(DATASET) ] || [ -n "$$FASHION_MNIST_DIR" ]; } || missing="dataset-fashion-mnist"; \
	[ -f $(EMOJI_FONT) ] || missing="$$missing fonts-noto-color-emoji"; \
	[ -f $(CLDR_EN) ] || missing="$$missing unicode-cldr-core"; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if ! command -v apt-get >/dev/null; then \
	  echo "no apt-get: missing Debian packages$$missing (set FASHION_MNIST_DIR for Fashion-MNIST)"; exit 0; fi; \
	SUDO=$$( [ "$$(id -u)" = 0 ] && echo "" || echo sudo ); \
	$$SUDO apt-get install -y -qq $$missing || \
	  { $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq $$missing; }

train-quick: setup dataset
	$(PY) -m training --config training/configs/fashion_mnist_quick.yaml

clean:
	rm -rf samples runs .pytest_cache
