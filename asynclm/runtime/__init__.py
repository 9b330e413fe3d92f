"""The concurrency runtime: settings and ``context()``, the ``.sync`` twin and its per-thread
portals, ``asyncify``, ``Parallel``, per-loop resources and process-wide limits.

Knows nothing about language models; every other layer builds on it.
"""

from ._contexts import enter_sync
from ._executor import Executor, current_executor
from ._home import HomeLoop, HomeLoopClosedError, home_loop
from ._iterate import iterate_sync
from ._limits import ConcurrencyLimiter, CrossLoopEvent, RateLimiter
from ._parallel import Parallel, call_with_args, run_items
from ._portal import PortalClosedError, shutdown_portals
from ._progress import Progress
from ._registry import loop_resource
from ._settings import Settings, configure, context, current_settings, settings
from ._sync import (
    BoundSyncTwin,
    SyncCallable,
    SyncInAsyncContextError,
    SyncTwin,
    asyncify,
    is_async_callable,
    run_sync,
    sync_twin,
    syncify,
)

__all__ = [
    "BoundSyncTwin",
    "ConcurrencyLimiter",
    "CrossLoopEvent",
    "Executor",
    "HomeLoop",
    "HomeLoopClosedError",
    "Parallel",
    "PortalClosedError",
    "Progress",
    "RateLimiter",
    "Settings",
    "SyncCallable",
    "SyncInAsyncContextError",
    "SyncTwin",
    "asyncify",
    "call_with_args",
    "configure",
    "context",
    "current_executor",
    "current_settings",
    "enter_sync",
    "home_loop",
    "is_async_callable",
    "iterate_sync",
    "loop_resource",
    "run_items",
    "run_sync",
    "settings",
    "shutdown_portals",
    "sync_twin",
    "syncify",
]
