# Sourced by tests/engines/run.sh and bench.sh: the pinned vLLM venv (built once, cached under
# ~/.cache/cacheflow) and gRPC stubs made by the venv's grpcio-tools (build/py-vllm).
# Sets PY; engines_env returns 0 (ready), 3 (registry unreachable: skip) or 1 (failure).
engines_env() {
  BUILD=${BUILD:-build}
  export BUILD
  mkdir -p "$BUILD/test-logs"
  local venv rc
  venv=$(bash tests/engines/setup_venv.sh 2>"$BUILD/test-logs/engines-venv.log" | tail -n 1)
  rc=${PIPESTATUS[0]}
  [ "$rc" = 0 ] || return "$rc"
  [ -x "$venv/bin/python" ] || return 1
  PY="$venv/bin/python"
  mkdir -p "$BUILD/py-vllm"
  "$PY" -m grpc_tools.protoc --proto_path=proto --python_out="$BUILD/py-vllm" --grpc_python_out="$BUILD/py-vllm" \
    proto/cacheflow/v1/cacheflow.proto || return 1
  [ -x "$BUILD/cacheflowd" ] && [ -x "$BUILD/cacheflowctl" ] || { echo "$BUILD/cacheflowd not built (make first)" >&2; return 1; }
}
