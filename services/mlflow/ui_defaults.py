"""What MLflow's UI shows a browser that has not chosen yet: a CV team's training workspace.

MLflow 3.17.2's UI keeps its per-browser choices in local storage, under the keys below (read
from its bundle, mlflow/server/js/build/static/js; docs/onboarding.md). The page at ``/`` seeds
them before MLflow's scripts run, each only where the browser has no entry yet, so whatever a
person later picks (GenAI in the sidebar, the Getting Started section expanded, the assistant
opened) is kept.

* ``mlflow.workflowType_v1``: the view, from the link's ``workflowType``, else this entry, else
  GenAI (the experiment's ``mlflow.experimentKind`` tag is not consulted). A CV team's
  experiments are all model training.
* ``mlflow.assistant.fab.autoOpenedOnFirstLoad_v1``: without it the UI opens the MLflow
  Assistant panel by itself, a quarter of the width on every page, whenever the page is served
  from localhost; its button stays for whoever wants it.
* ``mlflow.home.getting-started.collapsed_v1`` (Model training only): the home page's Getting
  Started section is GenAI onboarding (Tracing, Evaluation, Prompts, a demo of traces); it stays
  one click away, collapsed under its heading.
* ``mlflow.telemetry.info.alert.dismissed_v1`` (only while MLflow's telemetry is off): the home
  page's notice says MLflow collects usage data, untrue on a server that collects none.

CVOPS_UI_DEFAULT_WORKFLOW: ``machine_learning`` (default), ``genai``, or ``mlflow`` (leave the
page as MLflow ships it, none of the above).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

STORAGE_KEY = "mlflow.workflowType_v1"
ASSISTANT_AUTO_OPENED_KEY = "mlflow.assistant.fab.autoOpenedOnFirstLoad_v1"
GETTING_STARTED_COLLAPSED_KEY = "mlflow.home.getting-started.collapsed_v1"
TELEMETRY_NOTICE_DISMISSED_KEY = "mlflow.telemetry.info.alert.dismissed_v1"
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


def browser_defaults(workflow: str, telemetry_disabled: bool) -> dict[str, object]:
    """The local-storage entries (key -> value) a browser that has none of them starts with."""
    defaults: dict[str, object] = {STORAGE_KEY: workflow, ASSISTANT_AUTO_OPENED_KEY: True}
    if workflow == "machine_learning":
        defaults[GETTING_STARTED_COLLAPSED_KEY] = True
    if telemetry_disabled:
        defaults[TELEMETRY_NOTICE_DISMISSED_KEY] = True
    return defaults


def seeded_index_html(index_html: str, defaults: dict[str, object]) -> str:
    # The UI stores JSON values, so each value is JSON-encoded, then embedded as a JS string literal.
    seeds = "".join(
        f"if(localStorage.getItem({json.dumps(key)})===null)"
        f"localStorage.setItem({json.dumps(key)},{json.dumps(json.dumps(value))});"
        for key, value in defaults.items()
    )
    script = f"<script>try{{{seeds}}}catch(e){{}}</script>"
    head_end = index_html.find("<head>")
    if head_end < 0:
        raise ValueError("MLflow's index.html has no <head>: the UI defaults cannot be seeded")
    head_end += len("<head>")
    return index_html[:head_end] + script + index_html[head_end:]


def install(app) -> None:
    """Serve ``/`` (MLflow's ``serve`` view) with the defaults seeded."""
    workflow = default_workflow()
    index = Path(app.static_folder or "", "index.html")
    if workflow is None or not index.is_file():
        return
    from flask import Response
    # What MLflow's own /ui-telemetry endpoint consults before answering disable_ui_telemetry.
    from mlflow.telemetry.utils import is_telemetry_disabled

    defaults = browser_defaults(workflow, telemetry_disabled=is_telemetry_disabled())
    page = seeded_index_html(index.read_text(encoding="utf-8"), defaults)
    app.view_functions["serve"] = lambda: Response(page, mimetype="text/html")
