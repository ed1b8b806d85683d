"""Server-side behaviour cvops changes in MLflow 3.17.2 (applied in every gunicorn worker).

Proxied artifacts only: with an S3 destination MLflow's /server-info advertises multipart
transfers, and clients then fetch *presigned S3 URLs* for downloads and large uploads. Those URLs
name the S3 endpoint as the server sees it (e.g. http://minio:9000 inside the compose network),
which team members' machines cannot reach: downloads hang for minutes and fail. Advertising no
multipart support keeps every byte flowing through the tracking server, so a client needs nothing
but the tracking URL. The server streams uploads to S3 itself, so large files still work.
"""

import functools

from mlflow.server import handlers
from mlflow.utils.server_info import (
    SERVER_INFO_MULTIPART_DOWNLOADS_ENABLED,
    SERVER_INFO_MULTIPART_UPLOADS_ENABLED,
)


def _without_presigned_transfers(build_payload):
    @functools.wraps(build_payload)
    def build():
        payload = build_payload()
        payload[SERVER_INFO_MULTIPART_UPLOADS_ENABLED] = False
        payload[SERVER_INFO_MULTIPART_DOWNLOADS_ENABLED] = False
        return payload

    build.cvops_patched = True
    return build


def apply():
    if not getattr(handlers.build_server_info_payload, "cvops_patched", False):
        handlers.build_server_info_payload = _without_presigned_transfers(
            handlers.build_server_info_payload
        )
