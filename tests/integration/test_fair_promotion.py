"""Fair champion vs challenger (real Keras models, real tracking server): `cvops evaluate` /
`evaluate_registered_model` scores a registered version on a COCO dataset laid out as
trainer/examples/make_shapes.py writes it, and `promote(reevaluate_on=...)` gates on the two
versions' evaluations on that one dataset instead of on what their training runs logged."""
from __future__ import annotations

import json
import tempfile
import uuid

import numpy as np
import pytest
from mlflow import MlflowClient

from cvops import registry
from cvops.cli import main as cvops_main
from cvops.detection_schema import CLASS_NAMES_TAG
from cvops.evaluation import EVALUATED_MODEL_TAG, VERSION_EVALUATION_TAG_PREFIX, evaluate_registered_model
from tests.harness.serving import IMAGE_SIZE, register_keras_detector
from tests.integration.sdk_env import use_sdk_env

pytestmark = pytest.mark.integration
pytest.importorskip("keras")

CATEGORIES = ["circle", "square", "triangle"]
SQUARE = (8, 8, 24, 24)  # where every picture of the evaluation set has its one square
GATES = [registry.Gate("eval/mAP", min_value=50.0), registry.Gate("eval/AP/square", min_improvement=-50.0)]


def write_squares_dataset(root) -> None:
    """Four pictures, each a dark square at SQUARE on a noisy light background, in make_shapes'
    layout (annotations/val.json in COCO format, images/val/*.png)."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(0)
    (root / "images" / "val").mkdir(parents=True)
    (root / "annotations").mkdir()
    images, annotations = [], []
    for index in range(4):
        pixels = np.clip(200 + rng.normal(0, 12, (IMAGE_SIZE, IMAGE_SIZE, 3)), 0, 255).astype(np.uint8)
        picture = Image.fromarray(pixels)
        ImageDraw.Draw(picture).rectangle((SQUARE[0], SQUARE[1], SQUARE[2] - 1, SQUARE[3] - 1), fill=(40, 30, 60))
        picture.save(root / "images" / "val" / f"{index:06d}.png")
        images.append({"id": index, "file_name": f"val/{index:06d}.png", "width": IMAGE_SIZE, "height": IMAGE_SIZE})
        x1, y1, x2, y2 = SQUARE
        annotations.append({"id": index + 1, "image_id": index, "category_id": 2, "bbox": [x1, y1, x2 - x1, y2 - y1],
                            "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
    categories = [{"id": i + 1, "name": name} for i, name in enumerate(CATEGORIES)]
    (root / "annotations" / "val.json").write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": categories}))


def fixed_box_detector(box, class_id: int, score: float = 0.9):
    """A Keras model in cvops' detection convention that answers one box, class and score for any
    picture (zero kernels, the answer in the biases): as good as its box is for the dataset."""
    import keras

    def constant(units, values):
        return keras.layers.Dense(units, kernel_initializer="zeros",
                                  bias_initializer=keras.initializers.Constant(values))(features)

    inputs = keras.Input((IMAGE_SIZE, IMAGE_SIZE, 3), name="image")
    features = keras.layers.Flatten()(keras.layers.Rescaling(1 / 255.0)(inputs))
    outputs = {
        "boxes": keras.layers.Reshape((1, 4))(constant(4, [float(v) for v in box])),
        "scores": constant(1, [score]),
        "classes": constant(1, [float(class_id)]),
    }
    return keras.Model(inputs, outputs)


def claims(ap: float) -> dict[str, float]:
    """What a training run logged about itself, on its own validation data."""
    return {"eval/mAP": ap, "eval/AP/square": ap}


@pytest.fixture
def sdk_env(tracking_server, tmp_path, monkeypatch):
    use_sdk_env(monkeypatch, tracking_server, tmp_path)
    return tracking_server


def test_promotion_gates_on_one_fair_evaluation_not_on_what_each_run_logged(sdk_env, tmp_path):
    client = MlflowClient(sdk_env.url)
    dataset = tmp_path / "squares"
    write_squares_dataset(dataset)
    name = f"fair-{uuid.uuid4().hex[:6]}"
    # The Keras habit: class 0 is background. Names, not ids, are matched to the dataset's.
    class_names = ["background", "square"]
    on_target = register_keras_detector(name, fixed_box_detector(SQUARE, class_id=1), claims(20.0),
                                        class_names=class_names)
    off_target = register_keras_detector(name, fixed_box_detector((16, 16, 32, 32), class_id=1), claims(90.0),
                                         class_names=class_names)
    assert json.loads(client.get_model_version(name, on_target).tags[CLASS_NAMES_TAG]) == class_names

    first = registry.promote(name, on_target, GATES, client=client, reevaluate_on=dataset)
    assert first.promoted, first.summary()
    assert first.champion_version is None and first.reevaluation.champion is None  # the challenger alone
    assert first.reevaluation.challenger["metrics"]["eval/mAP"] == pytest.approx(100.0)

    # On their own runs' numbers the off-target version wins (90 > 20)...
    assert all(check.passed for check in registry.promote(name, off_target, GATES, client=client, dry_run=True).checks)
    # ...scored on the same pictures, it finds no square (IoU 0.14 at best) and is refused.
    decision = registry.promote(name, off_target, GATES, client=client, reevaluate_on=dataset)
    assert not decision.promoted, decision.summary()
    assert client.get_model_version_by_alias(name, "champion").version == on_target
    assert [(check.metric, check.challenger, check.champion) for check in decision.checks] == [
        ("eval/mAP", pytest.approx(0.0), pytest.approx(100.0)), ("eval/AP/square", pytest.approx(0.0), pytest.approx(100.0))]

    evaluated = decision.reevaluation
    assert evaluated.dataset_digest == first.reevaluation.dataset_digest
    recorded = json.loads(client.get_model_version(name, off_target).tags[registry.DECISION_TAG])["reevaluation"]
    assert recorded["dataset_digest"] == evaluated.dataset_digest
    for role, version in (("challenger", off_target), ("champion", on_target)):
        run = client.get_run(recorded[role]["run_id"])
        assert run.data.tags[EVALUATED_MODEL_TAG] == f"models:/{name}/{version}"
        for gated in ("eval/mAP", "eval/AP/square", "inference/latency_p95_ms"):
            assert run.data.metrics[gated] == recorded[role]["metrics"][gated]
        [dataset_input] = run.inputs.dataset_inputs
        assert dataset_input.dataset.digest == evaluated.dataset_digest
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "evaluation")}
        assert {"evaluation/pr_curves.png", "evaluation/confusion_matrix.png", "evaluation/per_class_ap.json"} <= artifacts
        assert "inference/latency_p95_ms" in run.data.metrics
        pointer = json.loads(client.get_model_version(name, version).tags[VERSION_EVALUATION_TAG_PREFIX + evaluated.dataset_digest])
        assert pointer["run_id"] == recorded[role]["run_id"]

    card = client.get_model_version(name, off_target).description
    for expected in (registry.PROMOTION_SECTION, evaluated.dataset_digest, evaluated.challenger["run_id"],
                     evaluated.champion["run_id"], "| eval/mAP | 0 | 100 | FAIL"):
        assert expected in card


def test_cvops_evaluate_scores_an_alias_per_class_and_names_a_missing_class_tag(sdk_env, tmp_path, capsys, monkeypatch):
    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    client = MlflowClient(sdk_env.url)
    dataset = tmp_path / "squares"
    write_squares_dataset(dataset)
    name = f"fair-cli-{uuid.uuid4().hex[:6]}"
    untagged = register_keras_detector(name, fixed_box_detector(SQUARE, class_id=2))
    registry.set_alias(name, "candidate", untagged, client=client)

    assert cvops_main(["evaluate", f"models:/{name}@candidate", "--dataset", str(dataset)]) == 2
    assert f"models:/{name}/{untagged} has no cvops.class_names tag" in capsys.readouterr().err

    # The OD API's numbering: ids from 1, as the dataset's categories here.
    assert cvops_main(["evaluate", f"models:/{name}@candidate", "--dataset", str(dataset),
                       "--class-names", "background,circle,square,triangle"]) == 0
    assert f"models:/{name}/{untagged} on dataset digest" in capsys.readouterr().out
    result = evaluate_registered_model(f"models:/{name}/{untagged}", dataset, class_names={2: "square", 7: "kite"})
    assert result.metrics["eval/AP/square"] == pytest.approx(100.0)
    assert result.metrics["eval/predictions_outside_dataset_classes"] == 0
    per_class = {row["class"]: row for row in result.evaluation.per_class_table()}
    assert per_class["square"]["ground_truth"] == 4 and per_class["circle"]["ground_truth"] == 0
    # Each evaluation downloaded the model; no copy stays on the disk after it.
    assert not list(temp.rglob("MLmodel")), sorted(map(str, temp.rglob("MLmodel")))
