#!/usr/bin/env bash
# `ollama-gpu doctor --json --probe` on the lent H100 (driver 580, CUDA 13): issue #6 item 6's acceptance run.
#
# Runs from the repository root on the device machine (the device tool copies the working tree there):
#     bash benchmarks/gpu/doctor_h100.sh                   # with carry: [".whl"]
#     BACKEND=/path/to/libggml-cuda.so bash benchmarks/gpu/doctor_h100.sh   # also probe a real llama.cpp backend
#
# Needs there: python3 (the image's 3.12), cc (for the shim and, in run 2, the simulator's doubles), the NVIDIA
# driver (libcuda.so.1, libnvidia-ml.so.1 via nvidia-ml-py, which the image has). The image lacks structlog and
# python-dotenv (pexpect and ptyprocess only matter for the test suite): carry them as wheels in `.whl/`, made here
# (not on the device, which has no network) from the repository root with
#     echo /.whl/ >> .git/info/exclude
#     python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#         --platform manylinux2014_x86_64 -d .whl structlog==26.1.0 python-dotenv==1.2.4 pexpect==4.9.0 \
#         ptyprocess==0.7.0
# (all four are pure-Python wheels). The script installs whatever is in .whl/ into /tmp/site.
#
# Three runs, each printed as JSON (and saved under $OUT when the device tool sets it):
#   1. doctor --json --probe as the machine is (no Ollama installed there: the `ollama` check fails and the backend
#      probe has nothing to load; NVML, libcuda, nodes, modules and the cuInit probe are the point).
#   2. the same against the Ollama simulator's install (tests/ollama_sim) whose cuda_v13/libggml-cuda.so is the
#      fake GGML backend of tests/native, loaded on the REAL driver (it dlopens libcuda.so.1 and calls the driver as
#      cudart does), so the backend probe exercises the real cuInit and device list.
#   3. only with BACKEND=…: --backend pointing at a real llama.cpp CUDA build (see ../shared/gpu-harness).
set -uo pipefail
cd "$(dirname "$0")/../.."
REPO=$PWD
OUTDIR=${OUT:-/tmp/doctor-out}
mkdir -p "$OUTDIR"

if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || { echo "installing .whl/ failed" >&2; exit 1; }
    export PYTHONPATH=/tmp/site:$REPO
else
    export PYTHONPATH=$REPO
fi
python3 -c 'import structlog, dotenv' 2>/dev/null || {
    echo "structlog and python-dotenv are missing: carry them as wheels in .whl/ (see the header of $0)" >&2
    exit 1
}

echo "== host: $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -1)"
echo "== LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}"

run() {  # run NAME ARGS...: doctor with ARGS, JSON to stdout and $OUTDIR/doctor-NAME.json
    local name=$1; shift
    echo "== doctor $* ($name)"
    python3 -m launcher.cli doctor --json --probe "$@" >"$OUTDIR/doctor-$name.json" 2>"$OUTDIR/doctor-$name.err"
    local rc=$?
    cat "$OUTDIR/doctor-$name.json"
    sed 's/^/stderr: /' "$OUTDIR/doctor-$name.err" | tail -20
    echo "== exit code $rc ($name)"
    python3 - "$OUTDIR/doctor-$name.json" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
for c in d["checks"]:
    print(f"   {c['status']:<4} {c['name']:<15} {c['found'][:150]}")
print("   verdict:", d["verdict"]["outcome"], d["verdict"]["cause"], "-", d["verdict"]["says"])
EOF
}

run host

SIM=/tmp/doctor-sim
if python3 - "$SIM" <<'EOF'
import sys
from pathlib import Path
from tests.native.build import native_build
from tests.ollama_sim.install import make_install
inst = make_install(Path(sys.argv[1]), "D", cuda_backend=native_build().ggml_cuda)
print(inst.ollama)
EOF
then
    OGPU_OLLAMA=$SIM/bin/ollama run simulated-install
else
    echo "== could not build the simulated install; run 2 skipped"
fi

if [ -n "${BACKEND:-}" ]; then
    run real-backend --backend "$BACKEND"
fi
