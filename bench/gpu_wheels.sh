#!/usr/bin/env bash
# Downloads into .whl/ the wheels bench/gpu_check.py needs on a CUDA host whose Python (3.12)
# already has torch, accelerate, tokenizers, safetensors, huggingface-hub, aiohttp, Pillow and
# uvloop (the device machines' image): the rest of jobhive's stack, no torch, no CUDA packages.
# There: pip install --no-index --no-deps --target /tmp/site .whl/*.whl; PYTHONPATH=/tmp/site.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
platforms=()
for n in 2_28 2_27 2_24 2_17 2014 1; do
  case $n in 2014) platforms+=(--platform manylinux2014_x86_64) ;; 1) platforms+=(--platform manylinux1_x86_64) ;;
    *) platforms+=(--platform "manylinux_${n}_x86_64") ;; esac
done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${platforms[@]}" -d .whl \
  "diffusers==$(.venv/bin/python -c 'import diffusers; print(diffusers.__version__)')" \
  transformers==5.23.0 orjson ffmpeg-python future importlib-metadata
du -sh .whl
