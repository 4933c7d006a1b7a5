#!/bin/bash
# The GPU measurements this README still lacks, as one call of the device tool (about 8 min).
# Here, first: ../shared/tools/gpu-prep. Then the device tool's run with
#     carry [".whl", ".gpu-data"], timeout_s 590, command: bash experiments/throughput/gpu-check.sh
# $OUT gets metric_compile.txt and the benchmark's throughput.json, throughput.md and logs.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
# The metric networks eager and compiled (planted random weights, 24 RESISC45 samples).
python3 -c "from benchmarks.throughput import plant_metric_weights as p; from pathlib import Path; p(Path('/tmp/tp/torch_home'))"
TORCH_HOME=/tmp/tp/torch_home timeout 150 python3 -m benchmarks.metric_compile \
    --images .gpu-data/rs-samples/resisc45 --n 24 2>&1 | tee "$OUT/metric_compile.txt"
# The loop against the floors, every model compiled too; --budget-s skips what would not fit.
timeout 420 python3 -m benchmarks.throughput --workdir /tmp/tp --out "$OUT" --budget-s 390 \
    --job-timeout-s 200 --compile-models sd21,flux2,sana,qwen
