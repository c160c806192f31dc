# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv and install what they need.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export RAY_AUTH_MODE ?= disabled

.PHONY: demo test install browser llama autoscaling clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

# Headless Chromium for the report's browser test (Debian package; needs root). Without it that test skips.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing chromium for the report's browser test"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "chromium not found and cannot be installed here: the browser test will be skipped"; fi; }

# llama.cpp's OpenAI-compatible server and a small real model, for the real-judge tests: built from PyPI's
# llama-cpp-python source package once (4-17 min on 2 cores), then found in ~/.cache/rae-ray.
llama: $(STAMP)
	@command -v cmake >/dev/null 2>&1 && command -v c++ >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing cmake and g++ to build llama-server"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq cmake g++ >/dev/null; fi; }
	$(BIN)/python -m rae_ray.llamacpp build

demo: $(STAMP)
	$(BIN)/rae-ray demo $(if $(OUT),--out $(OUT),) $(if $(IMAGES),--images $(IMAGES),)

test: $(STAMP) browser llama
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# A job growing a (fake multi-node, real autoscaler) cluster and the cluster shrinking after; prints the timeline.
autoscaling: $(STAMP)
	$(BIN)/python -m pytest -q -s tests/cluster/test_autoscaling.py

clean:
	rm -rf $(VENV) rae-output .pytest_cache
