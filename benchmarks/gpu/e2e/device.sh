#!/usr/bin/env bash
# ollama-gpu on a real GPU (issue #8), on the device machine, from the repository root, with `.carry` and `.whl`
# carried (benchmarks/gpu/e2e/prep.sh makes both here). Two device calls on one warm machine, each under 600 s:
#
#   bash benchmarks/gpu/e2e/device.sh build    # llama.cpp build in the background (setsid: it outlives the call),
#                                              # models, environment checks; waits for the build up to WAIT_BUILD s,
#                                              # then (time permitting) the healthy scenario and the speed figures
#   bash benchmarks/gpu/e2e/device.sh run      # waits for the build, runs the rest (the fault scenarios; all of it
#                                              # when `build` had no time), ends with the whole table; then
#                                              # benchmarks/gpu/doctor_h100.sh when it exists
#   bash benchmarks/gpu/e2e/device.sh all      # both, for a machine without the 600 s limit
#
# Everything goes to /tmp/ogpu-e2e; what comes back is packed into at most 6 files under $OUT.
set -euo pipefail
REPO=$PWD
E2E=$REPO/benchmarks/gpu/e2e
W=/tmp/ogpu-e2e
OUTDIR=${OUT:-$W/out}
mkdir -p "$W/models" "$OUTDIR"
export PATH=/usr/local/cuda/bin:$PATH PYTHONUNBUFFERED=1
T0=$(date +%s)
say() { echo "[device t=$(( $(date +%s) - T0 ))s] $*"; }
# What `build` runs when the build is done in time (FIGURES_BY), and `run` then skips. On a machine of several GPUs:
# FIRST=multi-split,multi-filter-op,multi-stale,healthy (issue #9).
FIRST=${FIRST:-healthy,bench-tg,llama-bench,launch}

wheels() {  # the project's dependencies the image lacks (structlog, python-dotenv, pexpect, ptyprocess)
    if [ ! -f /tmp/site/.done ] && compgen -G ".whl/*.whl" >/dev/null; then
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
            .whl/*.whl && touch /tmp/site/.done
    fi
    # the package itself too: config/ and shim/ ship as launcher._config and launcher._shim (pyproject's package-dir)
    [ -f /tmp/site/.pkg ] || { python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-compile \
        --target /tmp/site "$REPO" && touch /tmp/site/.pkg; }
    export PYTHONPATH=/tmp/site:$REPO
    python3 -c 'import structlog, dotenv, psutil, pynvml, prometheus_client' || { echo "missing Python packages" >&2; exit 1; }
}

restore_hidden() {  # safety net: run_e2e.py renames trusted-dir libcuda.so.1 links away only for one scenario
    for f in /lib/x86_64-linux-gnu /usr/lib/x86_64-linux-gnu /lib64 /usr/lib64 /lib /usr/lib; do
        [ -e "$f/libcuda.so.1.ogpu-e2e-hidden" ] || [ -L "$f/libcuda.so.1.ogpu-e2e-hidden" ] || continue
        mv -f "$f/libcuda.so.1.ogpu-e2e-hidden" "$f/libcuda.so.1" || true
    done
}

build() {
    wheels
    if [ ! -f $W/build.rc ] && [ ! -f $W/build.started ]; then
        touch $W/build.started
        setsid nohup bash -c "bash '$E2E/build_llama.sh' > $W/build.log 2>&1; echo \$? > $W/build.rc" \
            </dev/null >/dev/null 2>&1 &
        say "llama.cpp build started in the background (log $W/build.log)"
    fi
    if [ ! -f $W/models.rc ] && [ ! -f $W/models.started ]; then
        touch $W/models.started
        setsid nohup bash -c "
            until [ -d /tmp/llama.cpp/gguf-py ]; do sleep 1; done
            export PYTHONPATH=/tmp/llama.cpp/gguf-py
            nice python3 '$E2E/make_model.py' '$REPO/.carry/ggml-vocab-llama-spm.gguf' $W/models/tiny-f16.gguf \
                --n-embd 256 --n-layer 2 --n-head 4 --n-ff 704 --name tiny-random-llama &&
            nice python3 '$E2E/make_model.py' '$REPO/.carry/ggml-vocab-llama-spm.gguf' $W/models/rand-1b-f16.gguf \
                --n-embd 2048 --n-layer 16 --n-head 16 --n-ff 5632 --name random-llama-1b
            echo \$? > $W/models.rc" </dev/null >$W/models.log 2>&1 &
        say "models started in the background (log $W/models.log)"
    fi
    {
        echo "## nvidia-smi"; nvidia-smi --query-gpu=name,driver_version,memory.total,pci.bus_id --format=csv || true
        echo "## LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}"
        echo "## ldconfig -p (cuda, nvidia-ml)"; ldconfig -p | grep -E 'libcuda\.so|libnvidia-ml' || echo none
        echo "## libcuda.so.1 in trusted dirs"; ls -la /lib/libcuda* /usr/lib/x86_64-linux-gnu/libcuda* 2>&1 || true
        echo "## toolkit stubs"; ls /usr/local/cuda*/targets/*/lib/stubs/libcuda* /usr/local/cuda*/lib64/stubs/libcuda* 2>&1 || true
        echo "## python"; python3 --version; python3 -c 'import sysconfig; print(sysconfig.get_config_var("INCLUDEPY"))'
        echo "## cc"; cc --version | head -1; nvcc --version | tail -1
    } > $W/env.txt 2>&1
    cat $W/env.txt
    # The simulator's install and the shim compile now, while the build runs, so `run` starts at once.
    python3 - <<EOF || say "simulator install check failed (run will retry)"
import sys; sys.path.insert(0, "$REPO")
from pathlib import Path
from tests.ollama_sim.install import build_launcher, build_cpu_backend
print("simulator launcher:", build_launcher(), "cpu backend:", build_cpu_backend())
EOF
    local wait=${WAIT_BUILD:-0}
    while [ ! -f $W/build.rc ] && [ $(( $(date +%s) - T0 )) -lt "$wait" ]; do
        sleep 10
        say "building: $(grep -c '^\[' $W/build.log 2>/dev/null || echo 0) lines; $(tail -c 150 $W/build.log | tr '\n\r' '  ')"
    done
    [ -f $W/build.rc ] && say "build finished rc=$(cat $W/build.rc)"
    tail -3 $W/build.log || true
    cp $W/env.txt "$OUTDIR/" 2>/dev/null || true
    # Time left in this call (FIGURES_BY s from its start at most): the healthy case and the figures now.
    local by=${FIGURES_BY:-0}
    if [ "$(cat $W/build.rc 2>/dev/null)" = 0 ] && [ "$by" -gt 0 ]; then
        while [ ! -f $W/models.rc ] && [ $(( $(date +%s) - T0 )) -lt $(( by - 120 )) ]; do sleep 2; done
        local soft=$(( by - $(( $(date +%s) - T0 )) - 20 ))
        if [ -f $W/models.rc ] && [ "$soft" -gt 90 ]; then
            e2e "$soft" --only "$FIRST"
            cp "$OUTDIR/e2e_results.json" $W/results-1.json 2>/dev/null || true
            pack
        fi
    fi
}

e2e() {  # e2e SOFT_DEADLINE ARGS...: run_e2e.py on the real stack, stopped 50 s after its soft deadline
    local soft=$1; shift
    set +e
    timeout -k 5 $(( soft + 50 )) python3 "$E2E/run_e2e.py" --mode real --llama-bin /tmp/llama.cpp/build/bin \
        --tiny $W/models/tiny-f16.gguf --bench-model $W/models/rand-1b-f16.gguf \
        --work $W/work --out "$OUTDIR" --pairs "${PAIRS:-6}" --deadline "$soft" "$@" ${E2E_ARGS:-} 2>&1 \
        | tee -a $W/e2e.log
    E2E_RC=${PIPESTATUS[0]}
    set -e
}

pack() {  # at most 8 files come back: the table, the results, one archive of logs and event streams
    tar czf "$OUTDIR/e2e-logs.tgz" -C $W --exclude='*.gguf' --exclude='work/ollama' --exclude='work/runner' \
        --exclude='work/shim-cache' --exclude='work/launch-timing' --exclude='work/bench-cwd' \
        e2e.log env.txt build.log models.log work/runs 2>/dev/null || true
}

run() {
    wheels
    trap restore_hidden EXIT
    local limit=${WAIT_BUILD_MAX:-400}
    while [ ! -f $W/build.rc ] || [ ! -f $W/models.rc ]; do
        if [ $(( $(date +%s) - T0 )) -ge "$limit" ]; then say "build or models not done after ${limit}s"; break; fi
        sleep 5
    done
    say "build rc=$(cat $W/build.rc 2>/dev/null || echo none) models rc=$(cat $W/models.rc 2>/dev/null || echo none)"
    tail -3 $W/build.log || true
    tail -2 $W/models.log || true
    [ "$(cat $W/build.rc 2>/dev/null)" = 0 ] || { tail -40 $W/build.log; exit 3; }
    # DEADLINE: seconds of this call for the run (a device call may last 600 s): run_e2e.py starts nothing after
    # its soft deadline and is stopped 50 s after it; doctor_h100.sh gets DOCTOR_S after that.
    local deadline=${DEADLINE:-520}
    local used=$(( $(date +%s) - T0 ))
    local soft=$(( deadline - used - ${DOCTOR_S:-45} ))
    if [ -f $W/results-1.json ]; then
        e2e "$soft" --skip "$FIRST" --merge $W/results-1.json
    else
        e2e "$soft"
    fi
    local rc=$E2E_RC
    restore_hidden
    if [ -f "$REPO/benchmarks/gpu/doctor_h100.sh" ]; then
        say "doctor_h100.sh (issue #6)"
        OUT=$W/doctor BACKEND=/tmp/llama.cpp/build/bin/libggml-cuda.so timeout "${DOCTOR_S:-45}" \
            bash "$REPO/benchmarks/gpu/doctor_h100.sh" > $W/doctor.log 2>&1 || say "doctor_h100.sh rc=$?"
        tail -c 4000 $W/doctor.log
        mkdir -p $W/doctor && cp $W/doctor.log $W/doctor/
        tar czf "$OUTDIR/doctor.tgz" -C $W doctor
    fi
    pack
    say "done (e2e rc=$rc); files in $OUTDIR: $(ls "$OUTDIR" | tr '\n' ' ')"
    cat "$OUTDIR/e2e_table.txt" 2>/dev/null || true
    return $rc
}

case "${1:-all}" in
    build) build ;;
    run) run ;;
    all) WAIT_BUILD=${WAIT_BUILD:-900} FIGURES_BY=0 build; run ;;
    *) echo "usage: $0 build|run|all" >&2; exit 2 ;;
esac
