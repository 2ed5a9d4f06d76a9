#!/usr/bin/env bash
# Here (a machine with network, from the repository root): what the device call carries, both git-ignored through
# .git/info/exclude. .carry/: the llama.cpp sources vendored in the PyPI sdist of llama-cpp-python (pinned) and a
# vocab-only GGUF for the random models (~11 MB); .whl/: the project's pure-Python dependencies the device image
# lacks. Nothing here is committed.
#
#   bash benchmarks/gpu/e2e/prep.sh
set -euo pipefail
V=${V:-0.3.36}
for p in /.carry/ /.whl/; do grep -qxF "$p" .git/info/exclude 2>/dev/null || echo "$p" >> .git/info/exclude; done
mkdir -p .carry .whl
if [ ! -f .carry/llama-src.tgz ]; then
    t=$(mktemp -d)
    python3 -m pip download -q --no-deps --no-binary :all: "llama-cpp-python==$V" -d "$t"
    tar xzf "$t/llama_cpp_python-$V.tar.gz" -C "$t"
    (cd "$t/llama_cpp_python-$V/vendor" &&
        tar czf "$OLDPWD/.carry/llama-src.tgz" --exclude='llama.cpp/tools/ui/node_modules' llama.cpp/ggml \
            llama.cpp/src llama.cpp/common llama.cpp/tools llama.cpp/vendor llama.cpp/include llama.cpp/cmake \
            llama.cpp/CMakeLists.txt llama.cpp/scripts llama.cpp/gguf-py llama.cpp/licenses llama.cpp/LICENSE \
            llama.cpp/app &&
        cp llama.cpp/models/ggml-vocab-llama-spm.gguf "$OLDPWD/.carry/")
    rm -rf "$t"
fi
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux2014_x86_64 -d .whl \
    structlog==26.1.0 python-dotenv==1.2.4 pexpect==4.9.0 ptyprocess==0.7.0 prometheus_client==0.26.0
ls -la .carry .whl
