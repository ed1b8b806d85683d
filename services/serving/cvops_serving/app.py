"""The WSGI app gunicorn runs (gunicorn.conf.py starts the alias poller in each worker).

    GET  /health                        200 while the process runs
    GET  /ready                         200 once every configured model is loaded, else 503
    GET  /v1/models                     what is served: alias, version, state
    POST /v1/models/<name>/predict      images in, detections out; header X-Model-Version
"""
from __future__ import annotations

import json
import logging
import os

from flask import Flask, Response, request
from mlflow import MlflowClient

from cvops_serving import config
from cvops_serving.auth import TrackingServerAuth
from cvops_serving.detections import BadInput, UnsupportedOutput, decode_image, images_from_json
from cvops_serving.models import ServedModels

MODELS_KEY = "cvops_served_models"
MAX_BODY_BYTES = 64 * 2**20


def _json(status: int, body: dict, headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(body), status=status, mimetype="application/json", headers=headers)


def error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    return _json(status, {"error": {"code": code, "message": message}}, headers)


def _request_images():
    """Multipart files (one image each), a JSON body, or the raw body as one image."""
    if request.files:
        return [decode_image(part.read(), f"file {part.filename or field!r}")
                for field, part in request.files.items(multi=True)]
    if request.mimetype == "application/json":
        try:
            payload = json.loads(request.get_data())
        except ValueError as exc:
            raise BadInput(f"JSON body: {exc}") from None
        return images_from_json(payload)
    body = request.get_data()
    if not body:
        raise BadInput("empty body: send PNG/JPEG bytes, multipart files or a JSON list of images")
    return [decode_image(body)]


def create_app(settings: config.Settings | None = None) -> Flask:
    settings = settings or config.from_environ()
    if settings.username:
        # MLflow's client reads its credentials from these (a *_FILE secret was resolved above).
        os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"] = settings.username, settings.password
    os.environ["MLFLOW_TRACKING_URI"] = settings.tracking_uri
    models = ServedModels(settings.models, MlflowClient(settings.tracking_uri), settings.poll_interval_s)
    auth = TrackingServerAuth(settings.tracking_uri, settings.auth_cache_s)
    app = Flask("cvops_serving")
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.extensions[MODELS_KEY] = models

    def authorised(model_name: str) -> Response | None:
        given = request.authorization
        credentials = (given.username or "", given.password or "") if given and given.type == "basic" else None
        verdict = auth.check(credentials, model_name)
        if verdict.status == 401:
            return error(401, "unauthenticated", verdict.message, {"WWW-Authenticate": 'Basic realm="cvops serving"'})
        if verdict.status != 200:
            return error(verdict.status, "forbidden" if verdict.status == 403 else "auth_unavailable", verdict.message)
        return None

    @app.get("/health")
    def health():
        return _json(200, {"status": "ok"})

    @app.get("/ready")
    def ready():
        return _json(200 if models.ready() else 503, {"ready": models.ready(), "models": models.status()})

    @app.get("/v1/models")
    def list_models():
        # Any login the tracking server accepts may list what is served.
        refused = authorised(settings.models[0].name)
        return refused or _json(200, {"models": models.status()})

    @app.post("/v1/models/<name>/predict")
    def predict(name: str):
        refused = authorised(name)
        if refused:
            return refused
        if name not in models:
            return error(404, "unknown_model", f"{name!r} is not served here; served: {sorted(models.status())}")
        serving = models.serving(name)  # this request keeps this version even if a swap happens now
        if serving is None:
            return error(503, "model_not_ready", f"{name}: no version is loaded yet ({models.status()[name]['last_error'] or 'loading'})",
                         {"Retry-After": "5"})
        try:
            images = _request_images()
            detections = serving.predict(images)
        except BadInput as exc:
            return error(400, "bad_input", str(exc))
        except UnsupportedOutput as exc:
            return error(500, "unsupported_model_output", str(exc))
        except Exception as exc:  # the model's own failure: the caller gets the reason, not a stack trace page
            logging.getLogger("cvops_serving").exception("prediction failed: %s v%s", name, serving.version)
            return error(500, "prediction_failed", f"{type(exc).__name__}: {exc}")
        return _json(200, {"model": name, "version": serving.version, "predictions": detections},
                     {"X-Model-Version": serving.version})

    @app.errorhandler(413)
    def too_large(_):
        return error(413, "too_large", f"request bodies are limited to {MAX_BODY_BYTES // 2**20} MiB")

    @app.errorhandler(404)
    def not_found(_):
        return error(404, "not_found", "unknown path; see docs/serving.md for the endpoints")

    @app.errorhandler(405)
    def wrong_method(_):
        return error(405, "method_not_allowed", "wrong method for this path; see docs/serving.md")

    return app


def application_from_environ() -> Flask:
    try:
        return create_app()
    except config.ConfigError as exc:
        raise SystemExit(f"cvops-serving: error: {exc}") from None
