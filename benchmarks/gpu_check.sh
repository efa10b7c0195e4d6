#!/bin/sh
# The GPU check of a lent machine (under 8 minutes): pytest -m gpu, the 12-block rehearsal on one task,
# bf16 training and inference throughput, peak memory -> results/benchmarks-suite/gpu_check.json.
cd "$(dirname "$0")/.." && PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" exec timeout 480 python benchmarks/gpu_check.py --results "${1:-results}" --threads 8
