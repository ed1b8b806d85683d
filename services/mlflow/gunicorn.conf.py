"""gunicorn settings for the cvops MLflow server (server_setup.py serve runs gunicorn with `-c` this).

All of gunicorn's settings live here, the worker class included: gunicorn runs MLflow's app
directly, not through `mlflow server`, which would choose them itself. Sizing and the reasons
behind each value: docs/server.md.
"""

import gc
import os
import sys

# server_patches.py sits beside this file; gunicorn does not put the config's folder on sys.path.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import server_patches  # noqa: E402 (needs the path above)


def _setting(name: str, default: str) -> str:
    # Compose hands over `${GUNICORN_THREADS:-}`-style variables as empty strings: empty means unset.
    return os.environ.get(name) or default


bind = f"{_setting('MLFLOW_HOST', '0.0.0.0')}:{_setting('MLFLOW_PORT', '5000')}"
workers = int(_setting("GUNICORN_WORKERS", "2"))
# gthread: idle keep-alive connections wait in the worker's poller instead of holding a thread,
# so clients that reuse a connection skip the TCP set-up on every call, and a slow multi-GB
# upload occupies one thread while the main loop keeps heart-beating (no worker timeout kill).
worker_class = "gthread"
threads = int(_setting("GUNICORN_THREADS", "8"))
# Only a worker whose main loop is stuck for this long is restarted; request length is unbounded.
timeout = int(_setting("GUNICORN_TIMEOUT", "300"))
graceful_timeout = int(_setting("GUNICORN_GRACEFUL_TIMEOUT", "60"))
# Longer than the idle timeout of typical reverse proxies (nginx 60 s) so the proxy closes first.
keepalive = int(_setting("GUNICORN_KEEPALIVE", "75"))
# A worker is replaced after this many requests (with jitter) to bound slow memory growth.
max_requests = int(_setting("GUNICORN_MAX_REQUESTS", "20000"))
max_requests_jitter = max_requests // 10
# The compose file runs behind Docker's network or an optional TLS proxy; trust its headers.
forwarded_allow_ips = _setting("GUNICORN_FORWARDED_ALLOW_IPS", "*")
# gunicorn 26 otherwise opens a control socket at one fixed path under $HOME: two servers on a
# host would fight over it, and the container's home is not meant to be written.
control_socket_disable = True
accesslog = _setting("GUNICORN_ACCESS_LOG", "") or None
errorlog = "-"
loglevel = _setting("GUNICORN_LOG_LEVEL", "info")

# The request-body reads (server_patches.py, patch request_body_reads) go in here, in gunicorn's
# master, so that every worker it forks reads bodies in 64 KiB blocks.
server_patches.apply("gunicorn")


def post_worker_init(worker):
    # The app is loaded in each worker (no preload), so the patches go in after loading it.
    server_patches.apply("worker")
    # Move the ~340 000 objects of the loaded app out of the garbage collector's view: otherwise
    # every full collection walks them all, which responses that allocate many objects (a page of
    # runs) trigger. search_runs of 10 typical runs: p95 219 -> 33 ms (docs/performance.md).
    gc.freeze()


def child_exit(server, worker):
    # Drop a dead worker's live gauges from the multiprocess Prometheus registry.
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
