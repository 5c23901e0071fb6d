# The two commands: `make demo` and `make test`. Both create .venv on first use and reuse it afterwards.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
EXTRAS ?= all,dev
STAMP  := $(VENV)/.hone-installed

export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TRANSFORMERS_NO_ADVISORY_WARNINGS := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: demo test venv clean bench image image-push

# The container image (Containerfile): GPU by default, FLAVOR=cpu for the slim CPU one (tag suffix -cpu).
VERSION   := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
IMAGE     ?= quay.io/hone/hone:$(VERSION)
FLAVOR    ?= cuda
CONTAINER ?= $(shell command -v podman 2>/dev/null || command -v docker 2>/dev/null || echo podman)
CPU_BASE  ?= docker.io/library/python:3.11-slim
CPU_TORCH ?= https://download.pytorch.org/whl/cpu
IMAGE_TAG := $(IMAGE)$(if $(filter cpu,$(FLAVOR)),-cpu,)
IMAGE_ARGS := $(if $(filter cpu,$(FLAVOR)),--build-arg BASE=$(CPU_BASE) --build-arg TORCH_INDEX_URL=$(CPU_TORCH),)

venv: $(STAMP)

# Reinstall only when the project's dependency files change.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e ".[$(EXTRAS)]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) examples/demo.py

test: $(STAMP)
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) demo-output .pytest_cache

image:
	$(CONTAINER) build -f Containerfile $(IMAGE_ARGS) -t $(IMAGE_TAG) .

image-push: image
	$(CONTAINER) push $(IMAGE_TAG)
