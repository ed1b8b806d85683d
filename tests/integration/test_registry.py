"""Model registry: log + register, aliases, the promotion gate, the model card (real server)."""
from __future__ import annotations

import os
import uuid

import numpy as np
import pytest
from mlflow import MlflowClient

import cvops
from cvops import registry
from cvops.registry import Gate
from tests.integration.sdk_env import use_sdk_env

pytestmark = [pytest.mark.integration, pytest.mark.patches_on_and_off]

GATES = [Gate("bbox/AP", higher_is_better=True, min_value=30.0),
         Gate("latency_p95_ms", higher_is_better=False, max_value=50.0)]


def _pyfunc_model():
    """A stand-in detector with a real pyfunc interface (no framework needed)."""
    import mlflow.pyfunc

    class Model(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input, params=None):
            return model_input

    return Model()


@pytest.fixture
def sdk_env(tracking_server, tmp_path, monkeypatch):
    use_sdk_env(monkeypatch, tracking_server, tmp_path)
    return tracking_server


def _train_and_register(model_name, ap, latency, tmp_path):
    data = tmp_path / "val"
    data.mkdir(exist_ok=True)
    (data / "img.jpg").write_bytes(b"jpeg")
    with cvops.start_run(experiment="sdk-registry", tags={"task": "detection", "framework": "pyfunc"}) as run:
        run.log_dataset(data, name="val-mini", context="evaluation")
        run.log_metrics({"bbox/AP": ap, "latency_p95_ms": latency})
        version = registry.log_model_and_register(run, _pyfunc_model(), "pyfunc", registered_model_name=model_name,
                                                  input_example=np.zeros((2, 3), dtype="float32"))
    return version


def test_promotion_gate_moves_the_alias_only_when_every_gate_passes(sdk_env, tmp_path):
    client = MlflowClient(sdk_env.url)
    name = "sdk-gate-detector"

    first = _train_and_register(name, ap=40.0, latency=20.0, tmp_path=tmp_path)
    decision = registry.promote(name, first.version, GATES, client=client)
    assert decision.promoted and decision.champion_version is None  # bounds only: no champion yet
    assert client.get_model_version_by_alias(name, "champion").version == first.version

    worse_ap = _train_and_register(name, ap=39.0, latency=20.0, tmp_path=tmp_path)
    decision = registry.promote(name, worse_ap.version, GATES, client=client)
    assert not decision.promoted and decision.champion_version == first.version
    failed = {c.metric: c for c in decision.checks if not c.passed}
    assert set(failed) == {"bbox/AP"} and failed["bbox/AP"].champion == 40.0
    assert client.get_model_version_by_alias(name, "champion").version == first.version

    too_slow = _train_and_register(name, ap=45.0, latency=80.0, tmp_path=tmp_path)
    decision = registry.promote(name, too_slow.version, GATES, client=client)
    assert not decision.promoted and "maximum" in decision.summary()

    better = _train_and_register(name, ap=41.0, latency=15.0, tmp_path=tmp_path)
    assert not registry.promote(name, better.version, GATES, client=client, dry_run=True).promoted
    decision = registry.promote(name, better.version, GATES, client=client)
    assert decision.promoted, decision.summary()
    assert client.get_model_version_by_alias(name, "champion").version == better.version
    assert '"promoted": true' in client.get_model_version(name, better.version).tags[registry.DECISION_TAG]

    tolerant = [Gate("bbox/AP", min_improvement=-1.0)]  # accept up to 1 AP regression
    slightly_worse = _train_and_register(name, ap=40.5, latency=15.0, tmp_path=tmp_path)
    assert registry.promote(name, slightly_worse.version, tolerant, client=client).promoted

    import mlflow.pyfunc

    model = mlflow.pyfunc.load_model(f"models:/{name}@champion")
    assert model.metadata.signature is not None  # inferred from the input example


def test_a_nan_metric_never_promotes_a_challenger_and_sets_no_bar_as_champion(sdk_env, tmp_path):
    """COCO evaluators report bbox/AP = NaN when a model detected nothing (docs/integrations.md)."""
    client = MlflowClient(sdk_env.url)
    name = f"sdk-gate-nan-{uuid.uuid4().hex[:6]}"
    detected_nothing = _train_and_register(name, ap=float("nan"), latency=20.0, tmp_path=tmp_path)
    decision = registry.promote(name, detected_nothing.version, GATES, client=client)
    assert not decision.promoted
    [failed] = [c for c in decision.checks if not c.passed]
    assert failed.metric == "bbox/AP" and "NaN" in failed.reason

    registry.set_alias(name, "champion", detected_nothing.version, client=client)
    trained = _train_and_register(name, ap=35.0, latency=20.0, tmp_path=tmp_path)
    decision = registry.promote(name, trained.version, GATES, client=client)
    assert decision.promoted, decision.summary()
    assert "champion's value is NaN" in decision.summary()


def test_registering_leaves_mlflow_s_tracking_uri_as_it_was(sdk_env, tmp_path, monkeypatch):
    """Registering pointed MLflow at the run's server and then pinned it there for the rest of the
    process: a later MLFLOW_TRACKING_URI (another server, the next test's) was ignored."""
    from mlflow.tracking._tracking_service import utils

    monkeypatch.setattr(utils, "_tracking_uri", None)  # as in a fresh process: only the variable set
    before = (utils._tracking_uri, os.environ.get("MLFLOW_TRACKING_URI"))
    _train_and_register(f"sdk-uri-{uuid.uuid4().hex[:6]}", ap=1.0, latency=1.0, tmp_path=tmp_path)
    assert (utils._tracking_uri, os.environ.get("MLFLOW_TRACKING_URI")) == before


def test_model_card_describes_data_metrics_and_setup(sdk_env, tmp_path):
    client = MlflowClient(sdk_env.url)
    data = tmp_path / "train"
    data.mkdir()
    (data / "img.jpg").write_bytes(b"jpeg")
    with cvops.start_run(experiment="sdk-registry", tags={"task": "detection", "backbone": "R50"}) as run:
        run.log_dataset(data, name="train-mini")
        run.log_metrics({"bbox/AP": 42.0})
        version = registry.log_model_and_register(run, _pyfunc_model(), "pyfunc", registered_model_name="sdk-card",
                                                  input_example=np.zeros((1, 3), dtype="float32"))
        card = registry.log_model_card(run, intended_use="Counting parcels on conveyor belts.",
                                       limitations="Not evaluated at night.", registered_version=version)
    for expected in ("## Intended use", "Counting parcels", "## Training data", "train-mini",
                     "## Metrics", "bbox/AP", "42", "## Limitations", "Not evaluated at night", "R50",
                     "models:/sdk-card/1"):
        assert expected in card
    stored = client.download_artifacts(run.run_id, registry.MODEL_CARD_FILE, str(tmp_path))
    assert open(stored).read() == card
    assert "Counting parcels" in client.get_model_version("sdk-card", version.version).description


def test_registering_needs_a_tracked_run(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(RuntimeError, match="tracked run"):
        registry.log_model_and_register(cvops.start_run(), object(), "pyfunc", registered_model_name="x")


def test_a_plain_user_registers_a_model_filed_under_the_run_s_experiment(sdk_env, tmp_path, monkeypatch):
    """Team members are not admins and may only read the Default experiment; the logged model must
    land in the run's own experiment (MLflow 3 otherwise files it under the active one: Default)."""
    username, password = f"trainee-{uuid.uuid4().hex[:6]}", "trainee-password-123"
    sdk_env.create_user(username, password)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", username)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)
    name = f"sdk-plain-user-{uuid.uuid4().hex[:6]}"

    with cvops.start_run(experiment=f"sdk-plain-user-{uuid.uuid4().hex[:6]}") as run:
        version = registry.log_model_and_register(run, _pyfunc_model(), "pyfunc", registered_model_name=name,
                                                  input_example=np.zeros((2, 3), dtype="float32"))

    client = MlflowClient(sdk_env.url)
    [logged] = client.search_logged_models(experiment_ids=[run.experiment_id])
    assert version.model_uri == f"models:/{logged.model_id}"
    assert logged.source_run_id == run.run_id
