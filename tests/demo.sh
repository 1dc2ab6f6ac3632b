#!/usr/bin/env bash
# make demo: the main job on a generated tiny model, CPU backend.
set -euo pipefail
BUILD=${BUILD:-build}
echo "demo: nothing to run yet (the model engine lands next)"
