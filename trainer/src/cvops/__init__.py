"""cvops: track computer-vision training on a shared MLflow server.

``import cvops`` loads no deep-learning framework; the integrations under
``cvops.integrations`` import theirs when used.
"""
from __future__ import annotations

__version__ = "0.1.0"
