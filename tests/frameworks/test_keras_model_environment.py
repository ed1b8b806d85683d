"""A registered Keras model can be rebuilt for serving from what it records: a fresh virtualenv
from its own requirements.txt loads it and predicts what the training process predicted. The
version the callback registers carries the ``candidate`` alias."""
import time

import numpy as np
import pytest

pytestmark = [pytest.mark.frameworks, pytest.mark.integration]

keras = pytest.importorskip("keras")
mlflow = pytest.importorskip("mlflow")

import cvops  # noqa: E402
from cvops.integrations.keras import CvopsCallback  # noqa: E402
from tests.frameworks.support import model_environment_predicts  # noqa: E402
from tests.integration.test_integration_keras import synthetic_boxes, tiny_detector  # noqa: E402


def test_registered_keras_model_serves_from_its_own_requirements(tracking_env, tmp_path, capfd):
    images, boxes, labels = synthetic_boxes(16, seed=4)
    model_name = f"keras-environment-{time.time_ns()}"
    model = tiny_detector()
    with cvops.start_run(experiment="integrations-keras") as run:
        model.fit(images, {"box": boxes, "cls": labels}, epochs=1, batch_size=8, verbose=0,
                  callbacks=[CvopsCallback(run, registered_model_name=model_name, input_example=images[:2])])
    expected = np.asarray(model(images[:3], training=False)["box"])

    client = mlflow.MlflowClient()
    candidate = client.get_model_version_by_alias(model_name, "candidate")
    assert candidate.run_id == run.run_id
    assert f"registered {model_name} version {candidate.version} as @candidate" in capfd.readouterr().err

    uri = f"models:/{model_name}@candidate"
    requirements = open(mlflow.pyfunc.get_model_dependencies(uri, format="pip")).read().split()
    # Every line pinned, one TensorFlow (MLflow's inference listed tensorflow beside tensorflow-cpu).
    assert all("==" in line or " @ " in line for line in requirements), requirements
    assert len([line for line in requirements if line.startswith("tensorflow")]) == 1, requirements
    served = model_environment_predicts(uri, images[:3], tmp_path)
    np.testing.assert_allclose(np.asarray(served["box"]), expected, rtol=1e-4, atol=1e-5)
