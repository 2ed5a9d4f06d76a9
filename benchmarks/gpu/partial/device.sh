#!/usr/bin/env bash
# Issue 17 item 4 on one H100, from the repository root on the device machine, with `.carry` and `.whl` carried
# (benchmarks/gpu/e2e/prep.sh makes both here). Reuses ../e2e's llama.cpp build and random models:
#
#   bash benchmarks/gpu/partial/device.sh build   # = benchmarks/gpu/e2e/device.sh build, waiting for it (llama.cpp
#                                                 # ~300 s + models); skip it on a machine that ran the e2e build
#   bash benchmarks/gpu/partial/device.sh run     # waits for the build, then run_partial.py: baseline + >= 6
#                                                 # configurations, ~30 s each, stops starting new ones at DEADLINE
#   bash benchmarks/gpu/partial/device.sh all     # both, for a machine without the 600 s limit
#
# Everything goes to /tmp/ogpu-partial; what comes back under $OUT: partial_table.txt, partial_results.json,
# partial-logs.tgz (the real server logs of every run: fixtures for ../../../tests), partial.log.
set -euo pipefail
REPO=$PWD
W=/tmp/ogpu-partial
E2E_W=/tmp/ogpu-e2e
OUTDIR=${OUT:-$W/out}
mkdir -p "$W" "$OUTDIR"
export PATH=/usr/local/cuda/bin:$PATH PYTHONUNBUFFERED=1
T0=$(date +%s)
say() { echo "[partial t=$(( $(date +%s) - T0 ))s] $*"; }

run() {
    local limit=${WAIT_BUILD_MAX:-420}
    while [ ! -f $E2E_W/build.rc ] || [ ! -f $E2E_W/models.rc ]; do
        if [ $(( $(date +%s) - T0 )) -ge "$limit" ]; then say "e2e build or models not done after ${limit}s"; break; fi
        sleep 5
    done
    [ "$(cat $E2E_W/build.rc 2>/dev/null)" = 0 ] || { say "no llama.cpp build (run: device.sh build)"; exit 3; }
    [ -f $E2E_W/models/rand-1b-f16.gguf ] || { say "no model $E2E_W/models/rand-1b-f16.gguf"; exit 3; }
    # the dependencies as ../e2e/device.sh installed them, and this tree's package installed afresh in front of them
    # (a warm machine's /tmp/site may hold the package of an older tree; the supervisor under test must be this one)
    rm -rf /tmp/site-partial
    python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --target /tmp/site-partial \
        "$REPO" || { say "could not install this tree's package"; exit 3; }
    export PYTHONPATH=/tmp/site-partial:/tmp/site:$REPO
    python3 -c 'import structlog, psutil, pynvml, launcher.memory_account' \
        || { say "missing Python packages (run device.sh build)"; exit 3; }
    # llama-quantize for the smaller-quantisation configuration (incremental; skipped when the target is missing)
    if [ ! -x /tmp/llama.cpp/build/bin/llama-quantize ]; then
        timeout 150 ninja -C /tmp/llama.cpp/build llama-quantize > $W/quantize-build.log 2>&1 \
            || say "llama-quantize not built (rc=$?); the quantisation configuration is skipped"
    fi
    nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used --format=csv > $W/env.txt 2>&1 || true
    cat $W/env.txt
    local deadline=$(( ${DEADLINE:-540} - ( $(date +%s) - T0 ) - 60 ))
    set +e
    timeout -k 5 $(( deadline + 90 )) python3 "$REPO/benchmarks/gpu/partial/run_partial.py" \
        --llama-bin /tmp/llama.cpp/build/bin --model $E2E_W/models/rand-1b-f16.gguf --work $W/work \
        --out "$OUTDIR" --deadline "$deadline" ${PARTIAL_ARGS:-} 2>&1 | tee $W/partial.log
    local rc=${PIPESTATUS[0]}
    set -e
    cp $W/partial.log $W/env.txt "$OUTDIR/" 2>/dev/null || true
    say "done rc=$rc; files in $OUTDIR: $(ls "$OUTDIR" | tr '\n' ' ')"
    return $rc
}

case "${1:-all}" in
    build) WAIT_BUILD=${WAIT_BUILD:-540} FIGURES_BY=0 bash "$REPO/benchmarks/gpu/e2e/device.sh" build ;;
    run) run ;;
    all) WAIT_BUILD=${WAIT_BUILD:-900} FIGURES_BY=0 bash "$REPO/benchmarks/gpu/e2e/device.sh" build; run ;;
    *) echo "usage: $0 build|run|all" >&2; exit 2 ;;
esac
