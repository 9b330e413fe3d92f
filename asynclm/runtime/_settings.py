"""Process defaults and task-local overrides.

Two layers, each an immutable value swapped atomically:

* ``_defaults`` — one ``Settings`` object for the process. ``configure`` builds a new one
  under a lock and swaps the reference, so it may be called from any thread or task, any number of
  times; readers never see half of an update.
* ``_overrides`` — a ``contextvars.ContextVar`` holding the overrides of the enclosing
  ``context`` blocks. Context variables are copied into child tasks, into ``asyncify`` worker
  threads and into ``.sync()`` portal calls, and nothing set there flows back to the caller.

The effective settings are the defaults with the overrides applied on top, so a ``configure()``
made after entering a ``context()`` block is still seen for the keys that block did not override.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from typing import Any

from ._backends import check_backend_installed

__all__ = ["Settings", "configure", "context", "current_settings", "settings"]


@dataclasses.dataclass(frozen=True)
class Settings:
    """One immutable snapshot of asynclm's settings.

    Attributes:
        lm: the default language model used by modules that have none set on them.
        adapter: the default adapter (``None`` means the module's own default, ``ChatAdapter``).
        backend: the event loop that ``.sync()`` portals run (``"asyncio"`` or ``"trio"``).
        cache_dir: where persistent LM caches live (``None``: the user cache directory).
        cache: a shared cache backend object (such as ``asynclm.RedisCache(url)``) used in place of
            the files under ``cache_dir``; ``None``: those files. Opaque to the runtime.
        callbacks: callbacks notified of module, LM, adapter and tool events.
        max_parse_retries: how many times a predictor re-asks the LM after an unparsable answer.
        trace: whether module calls record their inputs and outputs in the task-local trace.
        executor: where ``Parallel``, ``Module.batch`` and ``Evaluate`` (and so the optimizers'
            evaluations) run their items when no ``executor=`` is passed to them: an object with an
            async ``run_items`` method (``asynclm.ray.RayExecutor``); ``None``: in this process.
    """

    lm: Any = None
    adapter: Any = None
    backend: str = "asyncio"
    cache_dir: str | None = None
    cache: Any = None
    callbacks: tuple[Any, ...] = ()
    max_parse_retries: int = 1
    trace: bool = True
    executor: Any = None


_FIELDS: frozenset[str] = frozenset(f.name for f in dataclasses.fields(Settings))
_BACKENDS = ("asyncio", "trio")


def _check(kwargs: Mapping[str, Any], what: str) -> dict[str, Any]:
    unknown = sorted(set(kwargs) - _FIELDS)
    if unknown:
        raise TypeError(
            f"{what}() got unknown setting(s) {', '.join(map(repr, unknown))}; "
            f"known settings are: {', '.join(sorted(_FIELDS))}"
        )
    checked = dict(kwargs)
    backend = checked.get("backend")
    if backend is not None and backend not in _BACKENDS:
        raise ValueError(f"{what}(backend={backend!r}): the backend must be one of {_BACKENDS}")
    if backend is not None:
        check_backend_installed(backend)
    if "callbacks" in checked:
        checked["callbacks"] = tuple(checked["callbacks"] or ())
    cache = checked.get("cache")
    if cache is not None and isinstance(cache, (bool, int, float, str, bytes)):
        raise TypeError(
            f"{what}(cache={cache!r}) takes a cache backend object, such as "
            "asynclm.RedisCache('redis://localhost:6379/0'), or None for the default files under cache_dir. "
            "To turn the cache off or to memory only, pass cache=False / 'memory' to the LM or to one call."
        )
    cache_dir = checked.get("cache_dir")
    if cache_dir is not None and not isinstance(cache_dir, str):
        if not hasattr(cache_dir, "__fspath__"):
            raise TypeError(f"{what}(cache_dir={cache_dir!r}) takes a directory path (str or os.PathLike), or None")
        checked["cache_dir"] = str(cache_dir.__fspath__())
    executor = checked.get("executor")
    if executor is not None and not callable(getattr(executor, "run_items", None)):
        raise TypeError(
            f"{what}(executor={executor!r}): an executor is an object with an async run_items(...) method, "
            "such as asynclm.ray.RayExecutor(num_workers=2); or None to run in this process"
        )
    lm = checked.get("lm")
    if lm is not None and not callable(lm):  # an LM is an async callable; runtime knows no more of it
        hint = f"asynclm.LM({lm!r})" if isinstance(lm, str) else "asynclm.LM('openai/gpt-4o-mini')"
        raise TypeError(f"{what}(lm=...) needs an LM object, such as {hint}, not a {type(lm).__name__}")
    return checked


_lock = threading.Lock()
_defaults = Settings()


class _Layer:
    """The overrides of the enclosing ``context()`` blocks, with the merged snapshot cached."""

    __slots__ = ("_cache", "overrides")

    def __init__(self, overrides: dict[str, Any]) -> None:
        self.overrides = overrides
        self._cache: tuple[Settings, Settings] | None = None  # (base, merged)

    def resolve(self, base: Settings) -> Settings:
        # A layer is shared by every task and thread that copied the context. The (base, merged)
        # pair is read and written as one tuple, and the merge returned is the one computed for
        # *this* base: with two separate attributes, a thread holding stale defaults could
        # overwrite the merge between another thread's store and its return.
        cache = self._cache
        if cache is not None and cache[0] is base:
            return cache[1]
        merged = dataclasses.replace(base, **self.overrides)
        self._cache = (base, merged)
        return merged


_overrides: ContextVar[_Layer | None] = ContextVar("asynclm.settings", default=None)


def current_settings() -> Settings:
    """The effective settings in the calling task or thread (defaults + ``context()`` overrides)."""
    layer = _overrides.get()
    if layer is None:
        return _defaults
    return layer.resolve(_defaults)


def configure(**settings: Any) -> None:
    """Replace process-wide defaults for the given keys.

    Callable from any thread or task, any number of times: there is no owner thread. The new
    defaults are visible at once everywhere, except for keys overridden by an enclosing
    ``context`` block. Unknown keys raise ``TypeError`` listing the known ones.
    """
    global _defaults
    checked = _check(settings, "configure")
    with _lock:
        _defaults = dataclasses.replace(_defaults, **checked)


@contextlib.contextmanager
def context(**overrides: Any) -> Iterator[Settings]:
    """Override settings for the enclosed block only: ``with asynclm.context(lm=other): ...``.

    A plain (sync) context manager, usable in threads and in tasks alike. The overrides live in
    a context variable: they are seen by child tasks, ``asyncify`` threads and ``.sync()`` calls
    started inside the block, and never by sibling tasks or other threads. Blocks nest; the
    previous overrides are restored on exit. Yields the effective settings inside the block.
    """
    checked = _check(overrides, "context")
    parent = _overrides.get()
    merged = {**parent.overrides, **checked} if parent is not None else checked
    token = _overrides.set(_Layer(merged))
    try:
        yield current_settings()
    finally:
        _overrides.reset(token)


class _SettingsView:
    """Read-only view of the effective settings: ``asynclm.settings.lm``."""

    __slots__ = ()

    def __getattr__(self, name: str) -> Any:
        if name not in _FIELDS:
            known = ", ".join(sorted(_FIELDS))
            raise AttributeError(f"unknown setting {name!r}; known settings are: {known}")
        return getattr(current_settings(), name)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(
            "asynclm.settings is read-only: use asynclm.configure(...) for process defaults "
            "or `with asynclm.context(...)` for a block"
        )

    def snapshot(self) -> Settings:
        """The complete effective ``Settings`` object (one consistent snapshot)."""
        return current_settings()

    def __repr__(self) -> str:
        return f"<asynclm.settings {current_settings()!r}>"


settings = _SettingsView()
