"""The harness's S3 server behaves like the MinIO it stands in for, where the stack relies on it.

SeaweedFS checks each request's signature against its identities and keeps objects on disk: wrong
keys are refused and a restart loses nothing. The in-memory moto server used before did neither,
so no test could show what the platform does when the store says no or comes back from a restart.
"""

import hashlib
import os
import time

import pytest
from botocore.exceptions import ClientError

pytestmark = pytest.mark.integration

REFUSED_CREDENTIALS = {"SignatureDoesNotMatch", "InvalidAccessKeyId", "AccessDenied"}


@pytest.mark.parametrize("which", ["wrong-secret", "unknown-access-key"])
def test_wrong_credentials_are_refused(s3, which):
    keys = {"wrong-secret": (s3.access_key, "not-the-secret"),
            "unknown-access-key": ("nobody-key", s3.secret_key)}[which]
    client = s3.client(*keys)
    for call in (lambda: client.list_objects_v2(Bucket=s3.bucket),
                 lambda: client.put_object(Bucket=s3.bucket, Key="refused/x", Body=b"x")):
        with pytest.raises(ClientError) as refused:
            call()
        assert refused.value.response["Error"]["Code"] in REFUSED_CREDENTIALS
        assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    with pytest.raises(ClientError):
        s3.client().head_object(Bucket=s3.bucket, Key="refused/x")


def test_objects_survive_a_restart(s3):
    client = s3.client()
    payload = os.urandom(20 * 1024**2 + 3)  # several chunks
    key = f"restart-probe/{time.time_ns()}.bin"
    client.put_object(Bucket=s3.bucket, Key=key, Body=payload)

    recovery_s = s3.restart()

    stored = s3.client().get_object(Bucket=s3.bucket, Key=key)["Body"].read()
    assert hashlib.sha256(stored).digest() == hashlib.sha256(payload).digest()
    print(f"\n[measure] SeaweedFS restart (10 s grace, then start): serving stored objects again after {recovery_s:.1f} s")
