"""Optional framework imports: a missing framework says which cvops extra installs it."""
from __future__ import annotations

import importlib
from types import ModuleType


def require(module: str, *, extra: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ImportError(
            f"cvops.integrations needs '{module}' here ({error}); install it with: pip install 'cvops[{extra}]'"
        ) from error
