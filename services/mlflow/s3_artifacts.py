"""The server's S3 artifact repository: proxied uploads streamed to S3, a missing object a 404.

Installed by server_patches.py (patch ``s3_artifact_repository``; why: its docstring, "Streamed
uploads" and "A missing artifact is a 404"). A module of its own because it subclasses MLflow's
classes at import, which server_patches.py must not do: it is imported where MLflow's names may
have moved, and only imports this once the patch is verified for the installed MLflow.
"""

import posixpath

from botocore.exceptions import ClientError
from mlflow import exceptions
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, ErrorCode
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
