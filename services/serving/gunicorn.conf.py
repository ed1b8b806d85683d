"""gunicorn settings of the cvops inference server (the container runs
``gunicorn -c gunicorn.conf.py "cvops_serving.app:application_from_environ()"``)."""

import os
import sys

# cvops_serving sits beside this file; gunicorn does not put the config's folder on sys.path.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def _setting(name: str, default: str) -> str:
    # Compose hands over `${VAR:-}` as an empty string: empty means unset.
    return os.environ.get(name) or default


bind = f"{_setting('CVOPS_SERVE_HOST', '0.0.0.0')}:{_setting('CVOPS_SERVE_PORT', '8080')}"
# One worker by default: every worker holds its own copy of every model (two while swapping).
workers = int(_setting("GUNICORN_WORKERS", "1"))
# gthread: requests run on threads of one process, so they share the loaded models; frameworks
# release the GIL inside their kernels.
worker_class = "gthread"
threads = int(_setting("GUNICORN_THREADS", "4"))
timeout = int(_setting("GUNICORN_TIMEOUT", "120"))
graceful_timeout = int(_setting("GUNICORN_GRACEFUL_TIMEOUT", "30"))
keepalive = int(_setting("GUNICORN_KEEPALIVE", "75"))
control_socket_disable = True
accesslog = _setting("GUNICORN_ACCESS_LOG", "") or None
errorlog = "-"
loglevel = _setting("GUNICORN_LOG_LEVEL", "info")


def on_starting(server):
    # Checked once in the master: a worker that refused the configuration would be restarted
    # by gunicorn forever, repeating the message.
    from cvops_serving import config

    try:
        config.from_environ()
    except config.ConfigError as exc:
        sys.exit(f"cvops-serving: error: {exc}")


def post_worker_init(worker):
    # Models load in each worker after the fork, in the background: /health answers at once,
    # /ready once they are in.
    import logging

    from cvops_serving.app import MODELS_KEY

    logging.getLogger("cvops_serving").setLevel(logging.INFO)
    logging.getLogger("cvops_serving").addHandler(logging.StreamHandler())
    worker.wsgi.extensions[MODELS_KEY].start()
