"""Which view MLflow's UI opens on, for browsers that have not chosen one yet.

MLflow 3.17.2's UI picks GenAI or Model training per browser: the link's ``workflowType``
parameter, else local storage ``mlflow.workflowType_v1``, else GenAI (the experiment's
``mlflow.experimentKind`` tag is not consulted; docs/onboarding.md). A CV team's experiments are
all model training, so the page at ``/`` seeds that local-storage entry before MLflow's scripts
run. Only an absent entry is written: a person who picks GenAI in the sidebar keeps it.

CVOPS_UI_DEFAULT_WORKFLOW: ``machine_learning`` (default), ``genai``, or ``mlflow`` (leave the
page as MLflow ships it).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

STORAGE_KEY = "mlflow.workflowType_v1"
WORKFLOWS = ("machine_learning", "genai")
_MLFLOW_DEFAULT = "mlflow"


def default_workflow(environ=os.environ) -> str | None:
    value = environ.get("CVOPS_UI_DEFAULT_WORKFLOW", "").strip() or "machine_learning"
    if value == _MLFLOW_DEFAULT:
        return None
    if value not in WORKFLOWS:
        raise ValueError(f"CVOPS_UI_DEFAULT_WORKFLOW must be {', '.join(WORKFLOWS)} or {_MLFLOW_DEFAULT}, "
                         f"got {value!r}")
    return value


def seeded_index_html(index_html: str, workflow: str) -> str:
    # The UI stores JSON values, so the string itself is JSON-encoded, then embedded as a JS literal.
    stored = json.dumps(json.dumps(workflow))
    key = json.dumps(STORAGE_KEY)
    script = (f"<script>try{{if(localStorage.getItem({key})===null)"
              f"localStorage.setItem({key},{stored})}}catch(e){{}}</script>")
    head_end = index_html.find("<head>")
    if head_end < 0:
        raise ValueError("MLflow's index.html has no <head>: the UI default cannot be seeded")
    head_end += len("<head>")
    return index_html[:head_end] + script + index_html[head_end:]


def install(app) -> None:
    """Serve ``/`` (MLflow's ``serve`` view) with the default seeded."""
    workflow = default_workflow()
    index = Path(app.static_folder or "", "index.html")
    if workflow is None or not index.is_file():
        return
    from flask import Response

    page = seeded_index_html(index.read_text(encoding="utf-8"), workflow)
    app.view_functions["serve"] = lambda: Response(page, mimetype="text/html")
