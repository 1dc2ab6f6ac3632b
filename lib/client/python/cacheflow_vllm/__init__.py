"""cacheflow_vllm — vLLM KV connector backed by cacheflowd (see connector.py for the config).

Load it by module path:
    --kv-transfer-config '{"kv_connector": "CacheFlowConnector", "kv_connector_module_path":
                           "cacheflow_vllm", "kv_role": "kv_both", ...}'
The package directory lib/client/python must be on PYTHONPATH (or installed), with the gRPC
stubs from `make` (build/py, or $CACHEFLOW_PYSTUBS).
"""
from .connector import CacheFlowConnector, CacheFlowMetadata, SCHEDULERS, WORKERS

__all__ = ["CacheFlowConnector", "CacheFlowMetadata", "SCHEDULERS", "WORKERS"]
