# The harness (PostgreSQL cluster, S3 endpoint, MLflow server started by the container's own
# entrypoint) is a pytest plugin so every tier shares one implementation.
pytest_plugins = ["tests.harness.fixtures", "tests.harness.sweeps"]
