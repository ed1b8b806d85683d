"""What every framework adapter shares: optional imports that name the extra to install, and
the rule that tracking never kills training."""
from __future__ import annotations

import functools
import importlib
import logging
from types import ModuleType
from typing import Callable, TypeVar

log = logging.getLogger("cvops.integrations")
_F = TypeVar("_F", bound=Callable)


def require(module: str, *, extra: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ImportError(
            f"cvops.integrations needs '{module}' here ({error}); install it with: pip install 'cvops[{extra}]'"
        ) from error


def never_raises(method: _F) -> _F:
    """For framework callbacks: a tracking failure is logged with its traceback and training
    goes on (the Run spools what the server did not take)."""

    @functools.wraps(method)
    def guarded(*args, **kwargs):
        try:
            return method(*args, **kwargs)
        except Exception:
            log.warning("cvops: %s failed; training continues without it", method.__qualname__, exc_info=True)
            return None

    return guarded  # type: ignore[return-value]
