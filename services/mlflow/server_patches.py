"""Server-side behaviour cvops changes in MLflow 3.17.2 (applied in every gunicorn worker).

Proxied artifacts only. With an S3 destination MLflow's /server-info advertises multipart
transfers, and clients then fetch *presigned S3 URLs* for every download and for large uploads.
Those URLs name the S3 endpoint as the server sees it (e.g. http://minio:9000 inside the compose
network), which team members' machines cannot reach: downloads hang for minutes, then fail.

So the server (1) advertises no multipart support and (2) answers the presigned/multipart
endpoints with MLflow's own "not supported" errors (HTTP 501), which clients that force
MLFLOW_ENABLE_PROXY_MULTIPART_* on treat as "use the proxy". Every byte flows through the
tracking server and a client needs nothing but the tracking URL; the server streams uploads to S3
itself (multipart, server-side), so multi-GB files still work.
"""

import functools

from mlflow import exceptions
from mlflow.server import handlers
from mlflow.utils.server_info import (
    SERVER_INFO_MULTIPART_DOWNLOADS_ENABLED,
    SERVER_INFO_MULTIPART_UPLOADS_ENABLED,
)

# handlers' capability checks -> the exception each raises when a repository lacks the capability.
_REFUSED_CAPABILITIES = {
    "_validate_support_multipart_upload": exceptions._UnsupportedMultipartUploadException,
    "_validate_support_multipart_download": exceptions._UnsupportedMultipartDownloadException,
    "_validate_support_presigned_upload": exceptions._UnsupportedPresignedUploadException,
    "_validate_support_presigned_download": exceptions._UnsupportedPresignedDownloadException,
}


def _without_presigned_transfers(build_payload):
    @functools.wraps(build_payload)
    def build():
        payload = build_payload()
        payload[SERVER_INFO_MULTIPART_UPLOADS_ENABLED] = False
        payload[SERVER_INFO_MULTIPART_DOWNLOADS_ENABLED] = False
        return payload

    return build


def _refuse(exception_class):
    def validate(_artifact_repo):
        raise exception_class()

    return validate


def apply():
    if getattr(handlers, "_cvops_patched", False):
        return
    for name, exception_class in _REFUSED_CAPABILITIES.items():
        if not hasattr(handlers, name):  # fail loudly if an MLflow upgrade renamed a check
            raise RuntimeError(f"mlflow.server.handlers.{name} is gone: review server_patches.py")
        setattr(handlers, name, _refuse(exception_class))
    handlers.build_server_info_payload = _without_presigned_transfers(handlers.build_server_info_payload)
    handlers._cvops_patched = True
