# The harness (PostgreSQL cluster, S3 endpoint, MLflow server started by the container's own
# entrypoint) is a pytest plugin so every tier shares one implementation.
import sys

import pytest

pytest_plugins = ["tests.harness.fixtures", "tests.harness.sweeps"]


@pytest.fixture(autouse=True)
def _sdk_session_ends_with_its_test(tmp_path):
    """The SDK keeps one session per process, its spool where the test's CVOPS_SPOOL_DIR put it,
    usually in tmp_path. End it while that folder exists: a passing test's tmp_path is removed as
    the test ends (pytest.ini), and the next test's start_run would close the old session there."""
    yield
    tracking = sys.modules.get("cvops.tracking.run")
    if tracking is not None and tracking._session is not None:
        tracking._session.shutdown(tracking.FINISHED)
