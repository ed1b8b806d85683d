"""cvops: track computer-vision training on a shared MLflow server.

``import cvops`` loads no deep-learning framework (and not even MLflow until a run starts);
the integrations under ``cvops.integrations`` import theirs when used.

    import cvops
    with cvops.start_run(experiment="detector", tags={"framework": "detectron2"}) as run:
        run.log_params({"SOLVER.BASE_LR": 0.01})
        run.log_metrics({"total_loss": 0.3}, step=10)
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "start_run": "cvops.tracking.run",
    "Run": "cvops.tracking.run",
    "DisabledRun": "cvops.tracking.run",
    "sanitize_metric_name": "cvops.tracking.names",
    "ConfigError": "cvops.config",
    "registry": None,
    "tracking": None,
    "config": None,
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'cvops' has no attribute {name!r}")
    module_name = _LAZY[name]
    if module_name is None:
        return importlib.import_module(f"cvops.{name}")
    return getattr(importlib.import_module(module_name), name)
