"""cacheflow_vllm — vLLM KV connector backed by cacheflowd (see connector.py for the config).

Load it by module path:
    --kv-transfer-config '{"kv_connector": "CacheFlowConnector", "kv_connector_module_path":
                           "cacheflow_vllm", "kv_role": "kv_both", ...}'
The package directory lib/client/python must be on PYTHONPATH (or installed), with the gRPC
stubs from `make` (build/py, or $CACHEFLOW_PYSTUBS).
"""
# The connector needs torch and vllm; imported when first asked for (PEP 562), so that the
# layout helpers (weights.py, layout.py) load without them.
_CONNECTOR_NAMES = ("CacheFlowConnector", "CacheFlowMetadata", "SCHEDULERS", "WORKERS", "offer_weights")


def __getattr__(name):
    if name in _CONNECTOR_NAMES:
        from . import connector
        return getattr(connector, name)
    raise AttributeError(f"module 'cacheflow_vllm' has no attribute {name!r}")


__all__ = ["CacheFlowConnector", "CacheFlowMetadata", "SCHEDULERS", "WORKERS", "offer_weights"]
