"""The stack with SeaweedFS as its S3 store (docker-compose.seaweedfs.yml, services/seaweedfs/).

Unlike the moto stand-in of the other compose tests, SeaweedFS keeps objects in its volume and
checks every request's signature: an artifact logged through the server is read back intact after
the S3 container restarts, and a key other than the stack's is refused. The stack is the session's
`seaweedfs_stack` (tests/compose/conftest.py), which the chaos tier's compose faults share.
"""

import os

import pytest

pytestmark = [pytest.mark.compose, pytest.mark.timeout(1800)]

# Run inside the server container, which holds the stack's S3 keys as files: one listing with
# them, one with a wrong secret.
LIST_WITH_RIGHT_AND_WRONG_SECRET = """
import boto3, botocore.exceptions, os
def listing(secret):
    client = boto3.client("s3", endpoint_url=os.environ["MLFLOW_S3_ENDPOINT_URL"], region_name="us-east-1",
                          aws_access_key_id=open("/run/secrets/s3_access_key").read().strip(),
                          aws_secret_access_key=secret)
    try:
        client.list_objects_v2(Bucket=os.environ["MLFLOW_ARTIFACTS_DESTINATION"][len("s3://"):].split("/")[0])
        return "listed"
    except botocore.exceptions.ClientError as error:
        return error.response["Error"]["Code"]
print(listing(open("/run/secrets/s3_secret_key").read().strip()), listing("not-the-stack-s-secret"))
"""


def test_an_artifact_logged_through_the_server_survives_an_s3_restart(seaweedfs_stack, tmp_path):
    stack = seaweedfs_stack
    artifact = tmp_path / "model_final.pth"
    artifact.write_bytes(os.urandom(3 * 2**20))
    run_id = stack.client("log", str(artifact))["run_id"]
    before = stack.client("snapshot", str(tmp_path / "before"))
    assert run_id in before

    stack.compose("restart", "minio")
    print(f"\n[compose] SeaweedFS container restarted, stack healthy again after {stack.wait_healthy():.1f} s")

    assert stack.client("snapshot", str(tmp_path / "after")) == before


def test_the_store_refuses_a_key_other_than_the_stack_s(seaweedfs_stack):
    result = seaweedfs_stack.compose("exec", "-T", "mlflow", "python3", "-c", LIST_WITH_RIGHT_AND_WRONG_SECRET)
    assert result.stdout.split() == ["listed", "SignatureDoesNotMatch"], result.stderr
