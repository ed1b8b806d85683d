"""Server-side behaviour cvops changes in MLflow 3.17.2 (applied in every gunicorn worker).

Proxied artifacts only. With an S3 destination MLflow's /server-info advertises multipart
transfers, and clients then fetch *presigned S3 URLs* for every download and for large uploads.
Those URLs name the S3 endpoint as the server sees it (e.g. http://minio:9000 inside the compose
network), which team members' machines cannot reach: downloads hang for minutes, then fail.

So the server (1) advertises no multipart support and (2) answers the presigned/multipart
endpoints with MLflow's own "not supported" errors (HTTP 501), which clients that force
MLFLOW_ENABLE_PROXY_MULTIPART_* on treat as "use the proxy". Every byte flows through the
tracking server and a client needs nothing but the tracking URL.

Streamed uploads. MLflow 3.17.2 spools each proxied upload to a temp file and only then sends it to
S3, so a multi-GB checkpoint needs that much free disk in the container and takes receive time
plus S3 time. Registering an S3 repository with MLflow's StreamUploadMixin makes the upload handler
pass the request body straight to boto3's multipart upload (parts of 8 MB in memory).

The caller's user row from the auth cache. basic-auth reads the caller's row from the auth
database again after authenticating: for "is the caller an admin?" (asked on nearly every
request) and, for a user who is not an admin, for the id its grants are looked up by. The password
check just before was answered by MLflow's per-worker credential cache, which holds that same row.
Answering those reads from the cached row saves a pool checkout, a SELECT and a COMMIT each
(11.1 -> 9.1 ms per log_metric for an admin, docs/performance.md). It is exactly as fresh as the
credential: MLflow drops a user's cache entries when that user is changed, in the worker that
made the change; other workers follow within MLFLOW_AUTH_CACHE_TTL_SECONDS, as they already do
for a changed password. Grants are still read on every request: a revoked permission applies at
once.

Compact JSON. MLflow's handlers write every response with ``json.dumps(indent=2)``, which runs
Python's pure-Python encoder (the C one only serves compact output) and more than doubles the
body: a page of 10 typical runs is 83 KB pretty and 35 KB compact, 5.5 vs 3.6 ms to encode. The
JSON is the same document either way.

Pings without a round trip. MLflow's engines check every pooled connection before use with a
``SELECT 1`` (pool_pre_ping), so that a connection PostgreSQL closed while it sat in the pool (a
restart, idle_session_timeout, pg_terminate_backend) is replaced instead of failing a request.
PostgreSQL never writes to an idle session except to end it: it then sends the error that says
why and closes the socket. So a pooled connection whose socket has nothing to read is alive as far
as a ping could tell, and only one with something waiting is pinged for real (and replaced when that
fails, as before). MLflow never LISTENs, which would let notifications arrive on idle sessions.
That saves a round trip per checkout (0.14 ms on an idle machine, ~0.3 ms of a log_metric measured
side by side), on every request and on each extra checkout that the permission check of a user who
is not an admin makes.

A missing artifact is a 404. MLflow's S3 repository lets boto3's "Not Found" escape as an
INTERNAL_ERROR (HTTP 500) whose message names the bucket and the object's key; MLflow's client
retries a 500 with backoff, so downloading a wrong path took 4-5 minutes to fail. The repository
below answers a missing object with RESOURCE_DOES_NOT_EXIST (HTTP 404, which clients do not
retry), naming only the path as the request gave it (relative to the artifact root). Listing a
path that holds nothing is an empty listing, as before (S3 has no folders).

Run answers without links to logged models are not redacted. For a user who is not an admin,
MLflow parses every runs/get and runs/search answer back into protobuf to withhold links to
logged models the user may be denied, and finds none in runs that have none: 5–7 ms of a page
of 10 typical runs (docs/performance.md), growing with the page (the UI asks for 100). An answer in
which no logged model is named cannot need it, so only those that name one are checked.

A run's user is the login that created it (servers with basic-auth), not the client's claim:
run_attribution.py. The readiness probe /ready (both databases and the bucket): readiness.py. The UI's default view for
new browsers: ui_defaults.py. Metric writes, run reads and searches in
one or two PostgreSQL statements: tracking_store.py.
"""

import functools
import posixpath
import select
import sys

from botocore.exceptions import ClientError
from mlflow import exceptions
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, ErrorCode
from mlflow.server import handlers
from mlflow.store.artifact.artifact_repo import StreamUploadMixin
from mlflow.store.artifact.artifact_repository_registry import _artifact_repository_registry
from mlflow.store.artifact.s3_artifact_repo import S3ArtifactRepository
from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
from mlflow.utils.server_info import (
    SERVER_INFO_MULTIPART_DOWNLOADS_ENABLED,
    SERVER_INFO_MULTIPART_UPLOADS_ENABLED,
)
from sqlalchemy.dialects.postgresql.psycopg2 import PGDialect_psycopg2

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


class _UploadFromStream:
    """Looks like a boto3 client to S3ArtifactRepository._upload_file, uploads from a stream.

    Going through _upload_file keeps MLflow's upload policy (content type from the file name,
    bucket-owner parameters, MLFLOW_S3_UPLOAD_EXTRA_ARGS) in one place.
    """

    def __init__(self, s3_client, stream):
        self._s3_client = s3_client
        self._stream = stream

    def upload_file(self, Filename, Bucket, Key, ExtraArgs):  # noqa: N803 (boto3's names)
        self._s3_client.upload_fileobj(self._stream, Bucket, Key, ExtraArgs=ExtraArgs)


# S3's "no such object": NoSuchKey from a GET, a bare 404 from a HEAD (which boto3's download_file
# sends first; HEAD answers carry no error body).
_S3_NOT_FOUND_CODES = {"NoSuchKey", "404"}


class ArtifactNotFound(exceptions.MlflowException):
    def __init__(self, path):
        super().__init__(f"No artifact at '{path}'", error_code=RESOURCE_DOES_NOT_EXIST)


class ProxiedS3ArtifactRepository(S3ArtifactRepository, StreamUploadMixin):
    def download_artifacts(self, artifact_path, dst_path=None):
        try:
            return super().download_artifacts(artifact_path, dst_path)
        except exceptions.MlflowException as error:
            # MLflow's message lists every failed file under the bucket's URI.
            if error.error_code != ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
                raise
        raise ArtifactNotFound(artifact_path)

    def _download_file(self, remote_file_path, local_path):
        try:
            super()._download_file(remote_file_path, local_path)
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in _S3_NOT_FOUND_CODES:
                raise ArtifactNotFound(remote_file_path) from None
            raise

    def log_artifact_from_stream(self, stream, artifact_file_name, artifact_path=None):
        bucket, key = self.parse_s3_compliant_uri(self.artifact_uri)
        key = posixpath.join(key, artifact_path or "", posixpath.basename(artifact_file_name))
        self._upload_file(s3_client=_UploadFromStream(self._get_s3_client(), stream),
                          local_file=artifact_file_name, bucket=bucket, key=key)

    async def log_artifact_from_async_stream(self, chunks, artifact_file_name, artifact_path=None):
        # Only MLflow's FastAPI (uvicorn) artifact router calls this; cvops serves the Flask app.
        raise NotImplementedError("cvops serves MLflow's Flask app under gunicorn")


def _compact(message_to_json):
    @functools.wraps(message_to_json)
    def compact(message, *, pretty=True, convert_int64_to_number=True):
        return message_to_json(message, pretty=False, convert_int64_to_number=convert_int64_to_number)

    return compact


def _has_unread_data(dbapi_connection) -> bool:
    poller = select.poll()  # poll, not select: file descriptors above 1023 are fine
    poller.register(dbapi_connection.fileno(), select.POLLIN)
    return bool(poller.poll(0))  # also true on POLLHUP/POLLERR, which need no registering


def _ping_only_if_spoken_to(do_ping):
    @functools.wraps(do_ping)
    def ping(self, dbapi_connection):
        if dbapi_connection.closed or _has_unread_data(dbapi_connection):
            return do_ping(self, dbapi_connection)
        return True

    return ping


def _caller_from_the_auth_cache(auth):
    from flask import has_request_context, request

    uncached_get_user = auth.store.get_user

    # A plain cache lookup: MLflow's _authenticate_cached would check the password again on a miss,
    # and it fills the cache through store.get_user, which would come back here.
    @functools.wraps(uncached_get_user)
    def get_user(username):
        credentials = request.authorization if has_request_context() else None
        if (auth._USER_AUTH_CACHE is not None and credentials is not None and credentials.type == "basic"
                and credentials.username == username):
            key = auth._auth_cache_key(username, credentials.password)
            with auth._USER_AUTH_CACHE_LOCK:
                user = auth._USER_AUTH_CACHE.get(key)
            if user is not None:
                return user
        return uncached_get_user(username)

    return get_user


# Every link MLflow's run redaction withholds (a model input, a model output, a metric's model)
# names its logged model under this key (preserving_proto_field_name), so an answer without it
# has nothing to withhold. A param or tag that happens to contain the text only costs the check.
_MODEL_LINK_KEY = b'"model_id"'


def _redact_only_with_model_links(redact):
    @functools.wraps(redact)
    def redact_if_linked(response):
        if response.is_streamed or _MODEL_LINK_KEY in response.get_data():
            redact(response)

    return redact_if_linked


def apply():
    if getattr(handlers, "_cvops_patched", False):
        return
    import readiness
    import run_attribution
    import tracking_store
    import ui_defaults
    from mlflow.server import app

    ui_defaults.install(app)
    # Every engine of this process (tracking, registry, auth) uses this dialect class.
    PGDialect_psycopg2.do_ping = _ping_only_if_spoken_to(PGDialect_psycopg2.do_ping)
    # Loaded by gunicorn only when the server runs the basic-auth app (MLFLOW_AUTH=on).
    auth = sys.modules.get("mlflow.server.auth")
    readiness.install(app, auth)
    if auth is not None:
        run_attribution.install(SqlAlchemyStore)
        auth.store.get_user = _caller_from_the_auth_cache(auth)
        run_redactions = {auth.redact_get_run_model_links, auth.redact_search_runs_model_links}
        handlers_by_route = auth.AFTER_REQUEST_HANDLERS
        for route in [route for route, handler in handlers_by_route.items() if handler in run_redactions]:
            handlers_by_route[route] = _redact_only_with_model_links(handlers_by_route[route])
    for module in (handlers, auth):  # each imported message_to_json by name
        if module is not None:
            module.message_to_json = _compact(module.message_to_json)
    for name, exception_class in _REFUSED_CAPABILITIES.items():
        if not hasattr(handlers, name):  # fail loudly if an MLflow upgrade renamed a check
            raise RuntimeError(f"mlflow.server.handlers.{name} is gone: review server_patches.py")
        setattr(handlers, name, _refuse(exception_class))
    handlers.build_server_info_payload = _without_presigned_transfers(handlers.build_server_info_payload)
    _artifact_repository_registry.register("s3", ProxiedS3ArtifactRepository)
    if handlers._tracking_store is not None:  # built while loading the app: the builder would not apply
        raise RuntimeError("MLflow built its tracking store before server_patches.apply(): review it")
    handlers._tracking_store_registry.register("postgresql", tracking_store.build)
    handlers._cvops_patched = True
