#!/usr/bin/env bash
# `cacheflowctl gen-model` shapes against Hugging Face transformers (tests/engines/
# test_model_golden.py, its gen_model_shapes part only): transformers loads each generated
# checkpoint, saves its config.json again identically, and its KV equals `cacheflowctl kv`'s
# (1e-4 x max|ref|). Needs the vLLM venv's torch + transformers (built by `make test-engines`);
# skipped with a line without it (this script never builds it).
set -u
. "$(dirname "$0")/../lib/cf_test.sh"
cf_need_bins cacheflowctl
VENV=${CACHEFLOW_CACHE:-$HOME/.cache/cacheflow}/vllm-venv
"$VENV/bin/python" -c 'import torch, transformers, grpc_tools' 2>/dev/null ||
  cf_skip_all "no torch + transformers venv at $VENV (make test-engines builds it)"
# the client stubs the engines harness imports, from the venv's own protoc (as tests/engines/env.sh)
if [ ! -f "$BUILD/py-vllm/cacheflow/v1/cacheflow_pb2.py" ]; then
  mkdir -p "$BUILD/py-vllm"
  "$VENV/bin/python" -m grpc_tools.protoc --proto_path=proto --python_out="$BUILD/py-vllm" \
    --grpc_python_out="$BUILD/py-vllm" proto/cacheflow/v1/cacheflow.proto || { echo "FAIL protoc"; echo "0 passed, 1 failed"; exit 1; }
fi
CF_GOLDEN_GENMODEL_ONLY=1 exec nice "$VENV/bin/python" tests/engines/test_model_golden.py
