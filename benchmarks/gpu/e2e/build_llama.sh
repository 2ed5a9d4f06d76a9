#!/usr/bin/env bash
# Build llama.cpp with the CUDA backend as a separately loaded libggml-cuda.so (GGML_BACKEND_DL=ON), the layout
# Ollama's runners use, from the sources that prep.sh packed into .carry/llama-src.tgz. Run on the device machine
# from the repository root. Sources go to /tmp/llama.cpp (the RUNPATH of the binaries is /tmp/llama.cpp/build/bin,
# as in ../shared/fixtures/ggml-real); re-running resumes an interrupted build.
#
#   bash benchmarks/gpu/e2e/build_llama.sh            # ~5 s configure + ~300 s build with 16 jobs on the H100 machine
set -euo pipefail
CARRY=${CARRY:-$PWD/.carry}
SRC=/tmp/llama.cpp
JOBS=${JOBS:-$(nproc)}
export PATH=/usr/local/cuda/bin:$PATH

t0=$(date +%s)
if [ ! -d "$SRC" ]; then
    tar xzf "$CARRY/llama-src.tgz" -C /tmp
fi
if [ ! -f "$SRC/build/build.ninja" ]; then
    # GGML_NATIVE=ON is refused together with GGML_BACKEND_DL, so the CPU backend is the portable AVX2 variant.
    cmake -S "$SRC" -B "$SRC/build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
        -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 -DGGML_CUDA_FA=ON \
        -DGGML_BACKEND_DL=ON -DGGML_NATIVE=OFF -DBUILD_SHARED_LIBS=ON \
        -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
        -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF
fi
t1=$(date +%s)
ninja -C "$SRC/build" -j"$JOBS" llama-server llama-bench ggml-cuda ggml-cpu
t2=$(date +%s)
echo "llama.cpp build: configure $((t1 - t0)) s, build $((t2 - t1)) s, $JOBS jobs"
"$SRC/build/bin/llama-server" --version 2>&1 | head -2
