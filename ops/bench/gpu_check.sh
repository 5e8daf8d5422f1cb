#!/usr/bin/env bash
# The trainer daemon's GPU checks, as one prepared run for a session that is lent a GPU machine
# (the device tool: 15 minutes in all). From the repository root, with the device wheels in .whl/:
#
#     run(command="bash ops/bench/gpu_check.sh", carry=[".whl"], timeout_s=540)
#
# It installs agentnas without touching the machine's torch, then runs, each under its own time
# limit so one hang cannot eat the rest:
#   1. the throughput bench with the GPU default (32 candidates per worker process), 48 candidates:
#      six waves of K=8, so the steady state shows, not only the first wave;
#   2. the same with single-use worker processes (--worker-jobs 1), for the ratio between the two;
#   3. reuse_check on cuda:0: ordinary candidates (conv, LSTM with dropout, attention, autocast)
#      must not make a reused worker retire (false positives of the runtime check on CUDA);
#   4. the reused-worker and sandbox tests on the GPU machine's CPU.
# Output goes to $OUT (the device tool's folder that comes back) or ./gpu-check.
set -uo pipefail
OUT=${OUT:-gpu-check}
mkdir -p "$OUT"
python -c "import sys, torch; print(sys.version.split()[0], torch.__version__, torch.cuda.get_device_name(0))" \
    | tee "$OUT/machine.txt"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$OUT/machine.txt"
if compgen -G ".whl/*.whl" >/dev/null; then pip install -q --no-index --no-deps .whl/*.whl; fi
pip install -q --no-deps --no-build-isolation -e . || { echo "install failed"; exit 2; }

bench() {  # name, seconds, bench arguments...
    local name=$1 limit=$2
    shift 2
    echo "== $name: $*" | tee "$OUT/$name.txt"
    timeout "$limit" python -m agentnas.ops.bench.trainer_throughput --device cuda:0 "$@" 2>"$OUT/$name.log" \
        | tee -a "$OUT/$name.txt"
    echo "exit ${PIPESTATUS[0]}" | tee -a "$OUT/$name.txt"
}
bench reuse 200 --candidates 48 --baseline-candidates 8
bench single_use 130 --candidates 24 --baseline-candidates 8 --worker-jobs 1
timeout 90 python -m agentnas.ops.bench.reuse_check --device cuda:0 2>"$OUT/reuse_check.log" | tee "$OUT/reuse_check.txt"
timeout 60 python -m pytest -q -p no:cacheprovider tests/trainer_daemon/test_reuse.py \
    tests/trainer_daemon/test_sandbox.py -k "reuse" 2>&1 | tail -5 | tee "$OUT/tests.txt"
