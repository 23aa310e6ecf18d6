#!/usr/bin/env bash
# Every benchmark, one after the other (the million takes most of it; --quick took 4.5 minutes,
# its results in a temporary folder).
# Needs the bench extra: pip install -e '.[bench]'
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ "${1:-}" == "--quick" ]]; then
  IMAGEDB_BENCH_RESULTS=$(mktemp -d)
  export IMAGEDB_BENCH_RESULTS
  echo "results in $IMAGEDB_BENCH_RESULTS"
  python bench/ingest_bench.py --images 32
  python bench/vectors_bench.py --quick
  python bench/dupes_quality.py
  python bench/dupes_scale.py --n 5000 --baseline-n 5000
  python bench/growth_bench.py --sizes 10000 20000
  python bench/api_bench.py --n 2000
  python bench/cli_latency.py --runs 2
  python bench/text_cache_bench.py --runs 2
  python bench/decode_memory.py
  python bench/rebuild_bench.py --n 3000 --threshold-n 500
  python bench/cpu_models_bench.py --rounds 1 --models ViT-B-32 MobileCLIP-S1
  python bench/exact_bench.py --n 5000
  python bench/insert_bench.py --n 3000 --rows 256
  python bench/scale_bench.py --n 5000 --sets clustered
  python bench/graph_bench.py --n 5000
else
  python bench/ingest_bench.py | tee bench/results/ingest.txt
  python bench/vectors_bench.py --n 100000 | tee bench/results/vectors_100000.txt
  python bench/dupes_quality.py | tee bench/results/dupes_quality.md
  python bench/dupes_scale.py --n 100000 | tee bench/results/dupes_scale.txt
  python bench/growth_bench.py | tee bench/results/growth.txt
  python bench/api_bench.py | tee bench/results/api.txt
  python bench/cli_latency.py | tee bench/results/cli_latency.txt
  python bench/text_cache_bench.py | tee bench/results/text_cache.txt
  python bench/decode_memory.py | tee bench/results/decode_memory.txt
  python bench/rebuild_bench.py --n 50000 | tee bench/results/rebuild.txt
  python bench/cpu_models_bench.py | tee bench/results/cpu_models.txt
  python bench/exact_bench.py --n 100000 | tee bench/results/exact.txt
  python bench/insert_bench.py --n 100000 | tee bench/results/insert_100000.txt
  # The million: about 40 minutes on 2 quiet cores for the clustered set, as long again for the overlapping one.
  python bench/scale_bench.py --n 1000000 | tee bench/results/scale_1000000.txt
  # Denser graphs at a million: 13 minutes on 2 quiet cores.
  python bench/graph_bench.py --n 1000000 | tee bench/results/graph_1000000.txt
fi
