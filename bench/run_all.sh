#!/usr/bin/env bash
# Every benchmark, one after the other: each line writes the results files named in bench/results/README.md.
# The two millions take most of the time (see their comments); --quick (about 5 minutes on 2 quiet cores) runs
# every bench at a small size, with its results in a temporary folder, so the committed figures stay as they are.
#
# Not here: ingest_cuda.json and ingest_gpu.txt come from bench/gpu_ingest.sh on a machine with an NVIDIA GPU
# (see that script), not from this CPU run.
#
# Each text result starts with a header line (commit, CPU, cores, torch, Python, date: python bench/common.py
# --header); each JSON result carries the same facts in its "meta" block.
# Needs the bench extra: pip install -e '.[bench]'
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ "${1:-}" == "--quick" ]]; then
  IMAGEDB_BENCH_RESULTS=$(mktemp -d)
  echo "results in $IMAGEDB_BENCH_RESULTS"
fi
RESULTS=${IMAGEDB_BENCH_RESULTS:-bench/results}
export IMAGEDB_BENCH_RESULTS=$RESULTS

# run TEXT_FILE BENCH [ARGS...]: the header line and the bench's output, on screen and into $RESULTS/TEXT_FILE.
run() {
  local out=$1
  shift
  { python bench/common.py --header; python "$@"; } | tee "$RESULTS/$out"
}

if [[ "${1:-}" == "--quick" ]]; then
  run ingest.txt bench/ingest_bench.py --images 32
  run quantized.txt bench/quantized_bench.py --images 16 --batch-size 8
  run decode_profile.txt bench/decode_profile.py --images 8 --rounds 1
  run vectors_quick.txt bench/vectors_bench.py --quick
  run dupes_quality.md bench/dupes_quality.py
  run dupes_scale.txt bench/dupes_scale.py --n 5000 --baseline-n 5000
  run growth.txt bench/growth_bench.py --sizes 10000 20000
  run growth_tuned.txt bench/growth_bench.py --sizes 10000 --no-isotropic
  run api.txt bench/api_bench.py --n 2000
  run cli_latency.txt bench/cli_latency.py --runs 2
  run concurrent_ingest.txt bench/concurrent_ingest.py --images 32 --model tiny
  run text_cache.txt bench/text_cache_bench.py --runs 2
  run decode_memory.txt bench/decode_memory.py
  run rebuild.txt bench/rebuild_bench.py --n 3000 --threshold-n 500
  run cpu_models.txt bench/cpu_models_bench.py --rounds 1 --models ViT-B-32 MobileCLIP-S1
  run relevance.md bench/relevance_bench.py
  run ocr.txt bench/ocr_bench.py 1
  run keywords.txt bench/keywords_bench.py --n 5000
  run exact.txt bench/exact_bench.py --n 5000
  run metric_5000.txt bench/metric_bench.py --n 5000
  run insert_3000.txt bench/insert_bench.py --n 3000 --rows 256
  run scale_5000.txt bench/scale_bench.py --n 5000 --sets clustered
  run graph_5000.txt bench/graph_bench.py --n 5000
  run graph_5000_filtered.txt bench/graph_bench.py --n 5000 --graphs 24x128 --filtered --tag _filtered
  run text_recall_5000.txt bench/text_recall_bench.py --n 5000 --efs 40 100 --queries 20
else
  run ingest.txt bench/ingest_bench.py --precisions default fp32
  run quantized.txt bench/quantized_bench.py --images 96 --naive-images 48
  run decode_profile.txt bench/decode_profile.py
  run vectors_100000.txt bench/vectors_bench.py --n 100000
  run dupes_quality.md bench/dupes_quality.py
  run dupes_scale.txt bench/dupes_scale.py --n 100000
  run growth.txt bench/growth_bench.py
  run growth_tuned.txt bench/growth_bench.py --no-isotropic
  run api.txt bench/api_bench.py
  run cli_latency.txt bench/cli_latency.py
  run concurrent_ingest.txt bench/concurrent_ingest.py --images 160
  run browse_100000.txt bench/browse_bench.py --n 100000
  run text_cache.txt bench/text_cache_bench.py
  run decode_memory.txt bench/decode_memory.py
  run rebuild.txt bench/rebuild_bench.py --n 50000
  run cpu_models.txt bench/cpu_models_bench.py
  run relevance.md bench/relevance_bench.py
  # OCR (the ocr extra): seconds per image on a shared CPU, so about 4 minutes.
  run ocr.txt bench/ocr_bench.py 6
  run keywords.txt bench/keywords_bench.py --n 50000
  run exact.txt bench/exact_bench.py --n 100000
  # Each measure of search --metric: about 3 minutes.
  run metric_100000.txt bench/metric_bench.py --n 100000
  run insert_100000.txt bench/insert_bench.py --n 100000
  # Binary quantisation against halfvec at 100k: the clustered set alone, without hnswlib.
  run scale_100000.txt bench/scale_bench.py --n 100000 --sets clustered --no-hnswlib
  # The million: about 40 minutes on 2 quiet cores for the clustered set, as long again for the overlapping one.
  run scale_1000000.txt bench/scale_bench.py --n 1000000
  # Denser graphs at a million: 13 minutes on 2 quiet cores.
  run graph_1000000.txt bench/graph_bench.py --n 1000000
  # The denser graph alone again, with filtered searches (its build alone is about 6 minutes).
  run graph_1000000_filtered.txt bench/graph_bench.py --n 1000000 --graphs 24x128 --filtered --tag _filtered
  # Text queries and `imagedb tune` at 200,000 with the graph a collection of that size gets (about 10 minutes on 2
  # shared cores), then at the million on the dense graph (the load and build as above, then tune).
  run text_recall_200000_m16.txt bench/text_recall_bench.py --n 200000 --graph 16x64 --efs 40 100 200 400 640 --tag _m16
  run text_recall_500000.txt bench/text_recall_bench.py --n 500000 --efs 100 200 400 640 --queries 50
  run text_recall_1000000.txt bench/text_recall_bench.py --n 1000000
  # The embedded server's shared buffers at the million: initdb's 128 MB against imagedb's (loads its own million).
  run buffers_1000000.txt bench/buffers_bench.py --n 1000000
  # Citus, where it is built into the embedded server (python bench/citus_local.py build SRC); each line says so
  # and does nothing otherwise. A 1-node and a 2-worker cluster at 100k, then 2 shards; then the Citus tests.
  run citus_100000_8shards.txt bench/citus_bench.py --n 100000 --shards 8
  run citus_100000_2shards_cluster.txt bench/citus_bench.py --n 100000 --shards 2 --cluster-only
  run citus_tests.txt -m pytest -v tests/test_citus.py tests/test_citus_ready.py
fi
