"""Where benchmarks write their results: bench/results/, or IMAGEDB_BENCH_RESULTS (run_all.sh --quick uses a
temporary folder, so a quick run never overwrites the committed full-size figures)."""

import os
from pathlib import Path

RESULTS = Path(os.environ.get("IMAGEDB_BENCH_RESULTS") or Path(__file__).parent / "results")
RESULTS.mkdir(parents=True, exist_ok=True)
