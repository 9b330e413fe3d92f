"""How an ``LM`` travels to Ray workers: as its constructor arguments, never its API key.

An ``LM`` holds locks, limiters and connections, which cannot (and must not) be copied; a worker
builds its own ``LM`` from the same arguments, once per distinct configuration and process (so
every program that names the same model on that worker shares one client, its connections and
its limits). The API key comes from the worker's environment (``OPENAI_API_KEY`` ...), which
``RayExecutor(env_vars=...)`` or the cluster's runtime env sets: it is never in the shipped data.
"""

from __future__ import annotations

import hashlib
import json
import threading
from typing import Any

from asynclm.lm import LM

__all__ = ["lm_config", "lm_from_config", "use_cluster_limits"]

_LOCK = threading.Lock()
_BUILT: dict[str, LM] = {}
# set in a worker process by its actor: where the LMs built here take their limits from
_LIMITS: list[Any] = []  # [limiter actor handle, worker id]


def use_cluster_limits(actor: Any, worker_id: str) -> None:
    """Make the LMs built from now on in this process draw their limits from the limiter actor."""
    _LIMITS[:] = [actor, worker_id]


def lm_config(lm: LM) -> dict[str, Any]:
    """The arguments that rebuild ``lm`` elsewhere (no key, no connections, no SSL context)."""
    return {
        "model": lm.model,
        "base_url": lm.base_url,
        "cache": lm.cache,
        "max_retries": lm.max_retries,
        "timeout": lm.timeout,
        "max_concurrency": lm.max_concurrency,
        "rpm": lm.rpm,
        "tpm": lm.tpm,
        "max_response_bytes": lm.max_response_bytes,
        "price": lm.price,
        "params": dict(lm.default_params),
        "backoff": [lm.backoff_base, lm.backoff_max],
        "http_client_factory": lm.http_client_factory,
    }


def lm_from_config(config: dict[str, Any]) -> LM:
    """The worker's ``LM`` for ``config`` (one per distinct configuration in this process)."""
    factory = config.get("http_client_factory")
    shared = json.dumps({k: v for k, v in config.items() if k != "http_client_factory"}, sort_keys=True, default=repr)
    key = f"{shared}|{id(factory) if factory is not None else ''}"
    with _LOCK:
        lm = _BUILT.get(key)
        if lm is None:
            params = dict(config["params"])
            lm = LM(
                config["model"],
                base_url=config["base_url"],
                cache=config["cache"],
                max_retries=config["max_retries"],
                timeout=config["timeout"],
                max_concurrency=config["max_concurrency"],
                rpm=config["rpm"],
                tpm=config["tpm"],
                max_response_bytes=config["max_response_bytes"],
                price=config["price"],
                http_client_factory=factory,
                **params,
            )
            lm.backoff_base, lm.backoff_max = config["backoff"]
            if _LIMITS:
                from ._limits import install

                # the same key on every worker: LMs with the same arguments share the cluster's limits
                install(lm, hashlib.sha256(shared.encode()).hexdigest()[:16], _LIMITS[0], _LIMITS[1])
            _BUILT[key] = lm
        return lm
