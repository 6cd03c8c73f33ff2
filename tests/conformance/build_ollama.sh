#!/usr/bin/env bash
# Print the path of a pinned Ollama binary, building it on first use (CPU, cgo).
# The cache is outside the work tree, so a fresh clone on this machine (CI) finds it:
#   ${XDG_CACHE_HOME:-$HOME/.cache}/chatsvc/ollama-$OLLAMA_VERSION/ollama
# Progress goes to stderr; stdout is only the path.
set -euo pipefail
OLLAMA_VERSION=v0.17.4
cache="${XDG_CACHE_HOME:-$HOME/.cache}/chatsvc/ollama-$OLLAMA_VERSION"
binary="$cache/ollama"
here="$(cd "$(dirname "$0")/../.." && pwd)"
# A pointer from the work tree (ignored) to the cache, for people looking for it.
mkdir -p "$here/.cache" && ln -sfn "$cache" "$here/.cache/ollama"
if [ -x "$binary" ]; then
    echo "$binary"
    exit 0
fi

command -v go >/dev/null || { echo "build_ollama: go is not installed" >&2; exit 1; }
mkdir -p "$cache/include/miniaudio"

# The module zip leaves out llama.cpp's vendor/ folder (Go drops every vendor
# directory), so its three header-only libraries come from elsewhere: nlohmann
# json and stb from Debian, miniaudio.h from the miniaudio sdist on PyPI.
missing=()
[ -f /usr/include/nlohmann/json_fwd.hpp ] || missing+=(nlohmann-json3-dev)
[ -f /usr/include/stb/stb_image.h ] || missing+=(libstb-dev)
# cgo compiles llama.cpp's C and C++.
command -v gcc >/dev/null || missing+=(gcc)
command -v g++ >/dev/null || missing+=(g++)
if [ ${#missing[@]} -gt 0 ]; then
    echo "build_ollama: installing ${missing[*]} with apt-get" >&2
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if [ ! -f "$cache/include/miniaudio/miniaudio.h" ]; then
    tmp="$(mktemp -d)"
    trap 'rm -rf "$tmp"' EXIT
    "$here/.venv/bin/pip" download -q --disable-pip-version-check --no-deps \
        --no-binary :all: miniaudio==1.71 -d "$tmp" >&2
    tar -xzf "$tmp"/miniaudio-1.71.tar.gz -C "$tmp"
    cp "$tmp/miniaudio-1.71/miniaudio/miniaudio.h" "$cache/include/miniaudio/"
fi

echo "build_ollama: building Ollama $OLLAMA_VERSION with cgo (CPU only; minutes)" >&2
start=$(date +%s)
# go install stamps no version; Ollama's /api/version would say 0.0.0.
CGO_ENABLED=1 CGO_CPPFLAGS="-I$cache/include" GOBIN="$cache" go install \
    -ldflags "-X=github.com/ollama/ollama/version.Version=${OLLAMA_VERSION#v}" \
    "github.com/ollama/ollama@$OLLAMA_VERSION" >&2
echo "build_ollama: built in $(( $(date +%s) - start )) s: $binary" >&2
echo "$binary"
