"""The server's S3 artifact repository: proxied uploads streamed to S3, a missing object a 404, no
S3 detail in an error.

Installed by server_patches.py (patch ``s3_artifact_repository``; why: its docstring, "Streamed
uploads" and "A missing artifact is a 404"). Any other failure of the store (an unreachable
endpoint, a missing bucket, refused credentials) reached clients with the bucket, the object's key
or the endpoint in its message, or as Flask's HTML 500 page: it is now MLflow's JSON error naming
only the operation, the path as the request gave it and S3's error code, TEMPORARILY_UNAVAILABLE
(503) when the store cannot be reached or answers with a 5xx (S3's "InternalError … please try
again", "ServiceUnavailable", "SlowDown": a store starting up or overloaded, which clients should
retry; SeaweedFS answers InternalError for seconds while it restarts, which reached clients as a 500,
tests/chaos), INTERNAL_ERROR (500) otherwise. The server log keeps the
full error for the operator. A module of its own because it subclasses MLflow's
classes at import, which server_patches.py must not do: it is imported where MLflow's names may
have moved, and only imports this once the patch is verified for the installed MLflow.
"""

import contextlib
import functools
import inspect
import logging
import posixpath

from boto3.exceptions import S3UploadFailedError
from botocore.exceptions import BotoCoreError, ClientError
from mlflow import exceptions
from mlflow.protos.databricks_pb2 import (INTERNAL_ERROR, INVALID_PARAMETER_VALUE, RESOURCE_DOES_NOT_EXIST,
                                          TEMPORARILY_UNAVAILABLE, ErrorCode)
from mlflow.store.artifact.artifact_repo import StreamUploadMixin
from mlflow.store.artifact.s3_artifact_repo import S3ArtifactRepository


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


class IncompleteUpload(exceptions.MlflowException):
    def __init__(self, path, received, declared):
        super().__init__(f"The upload of '{path}' ended after {received} of its {declared} bytes; nothing was "
                         "stored", error_code=INVALID_PARAMETER_VALUE)


class _DeclaredLengthBody:
    """A request body that may not end before its Content-Length. gunicorn hands the application a
    body that simply ends where the client stopped sending (it sets wsgi.input_terminated, so
    werkzeug adds no check of its own), and boto3 then completed the upload: a client gone
    mid-checkpoint, or cut off for sending too slowly, left a truncated object that read as the
    whole artifact. Raising instead makes boto3 abort the upload (tests/integration/
    test_server_hostile_input.py)."""

    def __init__(self, stream, declared, path):
        self._stream, self._declared, self._path = stream, declared, path
        self._received = 0

    def read(self, size=-1):
        data = self._stream.read(size)
        self._received += len(data)
        if not data and size != 0 and self._received < self._declared:
            raise IncompleteUpload(self._path, self._received, self._declared)
        return data


def _whole_body(stream, path):
    from flask import has_request_context, request

    declared = request.content_length if has_request_context() else None
    return stream if declared is None else _DeclaredLengthBody(stream, declared, path)


# S3's "no such object": NoSuchKey from a GET, a bare 404 from a HEAD (which boto3's download_file
# sends first; HEAD answers carry no error body).
_S3_NOT_FOUND_CODES = {"NoSuchKey", "404"}


class ArtifactNotFound(exceptions.MlflowException):
    def __init__(self, path):
        super().__init__(f"No artifact at '{path}'", error_code=RESOURCE_DOES_NOT_EXIST)


class ArtifactStoreFailure(exceptions.MlflowException):
    def __init__(self, operation, path, cause, error_code=INTERNAL_ERROR):
        super().__init__(f"The artifact store failed to {operation} '{path or '.'}' ({cause}); the server log "
                         "has the details", error_code=error_code)


_logger = logging.getLogger("gunicorn.error")
_OWN_ERRORS = (ArtifactNotFound, ArtifactStoreFailure, IncompleteUpload)


def _store_error_code(error):
    """TEMPORARILY_UNAVAILABLE when S3 did not answer or answered 5xx, here or under MLflow's and
    boto3's wrappers (they raise their own errors while handling S3's), else INTERNAL_ERROR."""
    while error is not None:
        answer = error.response.get("ResponseMetadata", {}) if isinstance(error, ClientError) else {}
        if isinstance(error, BotoCoreError) or answer.get("HTTPStatusCode", 0) >= 500:
            return TEMPORARILY_UNAVAILABLE
        error = error.__cause__ or error.__context__
    return INTERNAL_ERROR


@contextlib.contextmanager
def _store_errors(operation, path):
    """S3's errors, and MLflow's messages built from them, as errors that name no bucket or key."""
    try:
        yield
    except _OWN_ERRORS:
        raise
    except ClientError as error:
        code = error.response.get("Error", {}).get("Code", "unknown")
        if code in _S3_NOT_FOUND_CODES:
            raise ArtifactNotFound(path) from None
        _logger.error("artifact store: %s %r failed: %s", operation, path, error)
        raise ArtifactStoreFailure(operation, path, f"S3 error {code}", _store_error_code(error)) from None
    except BotoCoreError as error:  # no answer from the endpoint: connection refused, timeouts
        _logger.error("artifact store: %s %r failed: %s", operation, path, error)
        raise ArtifactStoreFailure(operation, path, "unreachable", TEMPORARILY_UNAVAILABLE) from None
    except (S3UploadFailedError, exceptions.MlflowException) as error:  # their messages name the bucket
        _logger.error("artifact store: %s %r failed: %s", operation, path, error)
        raise ArtifactStoreFailure(operation, path, type(error).__name__, _store_error_code(error)) from None


def _reporting_store_errors(operation, path_argument):
    def decorate(method):
        signature = inspect.signature(method)

        @functools.wraps(method)
        def guarded(self, *args, **kwargs):
            path = signature.bind(self, *args, **kwargs).arguments.get(path_argument)
            with _store_errors(operation, path):
                return method(self, *args, **kwargs)

        return guarded

    return decorate


class ProxiedS3ArtifactRepository(S3ArtifactRepository, StreamUploadMixin):
    def download_artifacts(self, artifact_path, dst_path=None):
        try:
            return super().download_artifacts(artifact_path, dst_path)
        except exceptions.MlflowException as error:
            # MLflow's message lists every failed file under the bucket's URI; its code is that of
            # the files' errors (those of _download_file below) when they agree.
            if error.error_code == ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
                raise ArtifactNotFound(artifact_path) from None
            _logger.error("artifact store: download %r failed: %s", artifact_path, error)
            raise ArtifactStoreFailure("download", artifact_path, "see the server log",
                                       ErrorCode.Value(error.error_code)) from None

    def _download_file(self, remote_file_path, local_path):
        with _store_errors("download", remote_file_path):
            super()._download_file(remote_file_path, local_path)

    list_artifacts = _reporting_store_errors("list", "path")(S3ArtifactRepository.list_artifacts)
    delete_artifacts = _reporting_store_errors("delete", "artifact_path")(S3ArtifactRepository.delete_artifacts)
    log_artifact = _reporting_store_errors("upload", "artifact_path")(S3ArtifactRepository.log_artifact)
    log_artifacts = _reporting_store_errors("upload", "artifact_path")(S3ArtifactRepository.log_artifacts)

    def log_artifact_from_stream(self, stream, artifact_file_name, artifact_path=None):
        bucket, key = self.parse_s3_compliant_uri(self.artifact_uri)
        key = posixpath.join(key, artifact_path or "", posixpath.basename(artifact_file_name))
        path = posixpath.join(artifact_path or "", artifact_file_name)
        with _store_errors("upload", path):
            self._upload_file(s3_client=_UploadFromStream(self._get_s3_client(), _whole_body(stream, path)),
                              local_file=artifact_file_name, bucket=bucket, key=key)

    async def log_artifact_from_async_stream(self, chunks, artifact_file_name, artifact_path=None):
        # Only MLflow's FastAPI (uvicorn) artifact router calls this; cvops serves the Flask app.
        raise NotImplementedError("cvops serves MLflow's Flask app under gunicorn")
