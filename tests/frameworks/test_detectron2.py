"""The real Detectron2 (CPU) with ``CvopsHook``, against the harness's tracking server.

One real ``DefaultTrainer`` run (tests/frameworks/detectron2_training.py: the example's config,
a ``COCOEvaluator`` writing into ``OUTPUT_DIR``, ``EvalHook`` every 10 of 25 iterations, the
user's ``CVOPS_TAG_BACKBONE``) is shared by the assertions below; the project example runs as
its docs show; a run that fails mid-training shows the outcome tag. Each training takes well
under a minute of CPU on 64 px synthetic shapes.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.frameworks import detectron2_training, support

pytestmark = [pytest.mark.frameworks, pytest.mark.integration]

mlflow = pytest.importorskip("mlflow")

TRAINING_SCRIPT = Path(detectron2_training.__file__)
MAX_ITER = 25
USER_BACKBONE = "resnet18-gn-scratch"


@pytest.fixture(scope="module")
def d2_python(framework_python):
    return framework_python("detectron2")


@pytest.fixture(scope="module")
def shapes(d2_python, tmp_path_factory):
    data = tmp_path_factory.mktemp("d2data") / "shapes"
    subprocess.run([str(d2_python), str(support.EXAMPLES / "make_shapes.py"), str(data), "--train", "12",
                    "--val", "6", "--size", "64", "--max-objects", "2", "--tfrecord", "off"], check=True,
                   capture_output=True)
    return data


def train(d2_python, shapes, workdir: Path, *extra: str, env: dict | None = None) -> tuple[dict, Path, str]:
    output_dir = workdir / "output"
    model_name = f"d2-real-{time.time_ns()}"
    result = support.run_logged([d2_python, TRAINING_SCRIPT, shapes, output_dir, model_name, "--max-iter",
                                 str(MAX_ITER), *extra], log_path=workdir / "train.log", timeout_s=900, env=env)
    line = [line for line in result.output.splitlines() if line.startswith("RESULT ")][-1]
    return {**json.loads(line[len("RESULT "):]), "returncode": result.returncode, "log": result.output}, \
        output_dir, model_name


@pytest.fixture(scope="module")
def trained(d2_python, shapes, framework_env, tmp_path_factory):
    env = {**os.environ, "CVOPS_TAG_BACKBONE": USER_BACKBONE, "CVOPS_EXPORT": "register"}
    result, output_dir, model_name = train(d2_python, shapes, tmp_path_factory.mktemp("d2run"), env=env)
    assert result["returncode"] == 0, support.tail(result["log"])
    client = mlflow.MlflowClient()
    return {**result, "output_dir": output_dir, "model_name": model_name, "client": client,
            "run": client.get_run(result["run_id"])}


@pytest.fixture(scope="module")
def served(trained, d2_python, serve_champion):
    """The registered version as @champion, served over HTTP from the Detectron2 environment."""
    trained["client"].set_registered_model_alias(trained["model_name"], "champion", str(trained["registered_version"]))
    return serve_champion(d2_python, trained["model_name"])


def val_image_files(shapes: Path, count: int) -> list[Path]:
    val = json.loads((shapes / "annotations" / "val.json").read_text())["images"][:count]
    return [shapes / "images" / image["file_name"] for image in val]


def detectron2_metrics(output_dir: Path) -> dict[str, dict[int, float]]:
    """OUTPUT_DIR/metrics.json (JSONWriter: one line per write) as name -> {iteration: value}."""
    history: dict[str, dict[int, float]] = {}
    for line in (output_dir / "metrics.json").read_text().splitlines():
        record = json.loads(line)
        iteration = record.pop("iteration")
        for name, value in record.items():
            history.setdefault(name, {})[iteration] = value
    return history


def mlflow_history(client, run_id: str, name: str) -> dict[int, float]:
    import cvops

    return {m.step: m.value for m in client.get_metric_history(run_id, cvops.sanitize_metric_name(name))}


def same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=1e-6)


def test_run_finishes_with_detectron2s_own_scalars_at_its_iterations(trained):
    run, client = trained["run"], trained["client"]
    assert run.info.status == "FINISHED"
    assert run.data.tags["training_outcome"] == "finished"
    written = detectron2_metrics(trained["output_dir"])
    assert {"total_loss", "loss_cls", "loss_box_reg", "loss_rpn_cls", "loss_rpn_loc", "lr", "bbox/AP"} <= set(written)
    for name, by_iteration in written.items():
        arrived = mlflow_history(client, run.info.run_id, name)
        assert sorted(arrived) == sorted(by_iteration), name
        assert all(same(arrived[i], by_iteration[i]) for i in by_iteration), (name, arrived, by_iteration)
    assert sorted(written["total_loss"]) == [19, MAX_ITER - 1]
    # EvalHook evaluates at iterations 9 and 19 and after the last one; like JSONWriter, the
    # hook sends the latest value at each write (19 and the end), so 9's was superseded.
    assert sorted(mlflow_history(client, run.info.run_id, "bbox/AP")) == [19, MAX_ITER]
    assert {"bbox/AP50", "bbox/AP75", "bbox/APs"} <= set(run.data.metrics)


def test_config_params_use_one_format_for_tuples_and_lists(trained):
    params = trained["run"].data.params
    assert params["DATASETS.TRAIN"] == '["shapes_train"]'  # a tuple in the CfgNode
    assert params["INPUT.MIN_SIZE_TRAIN"] == "[64]"  # a tuple from --opts
    assert params["MODEL.ANCHOR_GENERATOR.SIZES"] == "[[16], [32], [48], [64], [96]]"  # lists
    assert params["SOLVER.BASE_LR"] == "0.02"


def test_the_users_backbone_tag_is_kept(trained):
    tags = trained["run"].data.tags
    assert tags["backbone"] == USER_BACKBONE
    assert tags["framework"] == "detectron2"


def test_evaluation_artifacts_and_latency_arrive_at_the_final_step(trained):
    run, client = trained["run"], trained["client"]
    run_id = run.info.run_id
    evaluation = {f.path for f in client.list_artifacts(run_id, "evaluation")}
    assert {"evaluation/coco_instances_results.json", "evaluation/metrics.json", "evaluation/per_class_ap.json",
            "evaluation/pr_curves.png", "evaluation/confusion_matrix.png"} <= evaluation
    assert client.list_artifacts(run_id, "evaluation/samples")
    per_class = json.loads(Path(client.download_artifacts(run_id, "evaluation/per_class_ap.json")).read_text())
    assert [row["class"] for row in per_class["per_class"]] == ["circle", "square", "triangle"]
    for name in ("eval/mAP", "eval/AP50", "inference/latency_p50_ms", "inference/images_per_s"):
        assert list(mlflow_history(client, run_id, name)) == [MAX_ITER], name
    assert not client.list_artifacts(run_id, "checkpoint")  # the full checkpoint is opt-in


def test_registration_exports_torchscript_and_onnx_with_their_parity_recorded(trained, served, shapes, framework_env,
                                                                               tmp_path):
    from cvops import export

    client, name = trained["client"], trained["model_name"]
    version = client.get_model_version(name, str(trained["registered_version"]))
    metrics = {m.key: m.value for m in client.get_logged_model(version.source.removeprefix("models:/")).metrics}
    for format_name, file in (("torchscript", "model.ts"), ("onnx", "model.onnx")):
        assert version.tags[export.tag(format_name)] == "passed", version.tags[export.tag(format_name)]
        folder = export.artifact_dir(format_name)
        assert {f.path for f in client.list_artifacts(version.run_id, folder)} == {f"{folder}/{file}", f"{folder}/export.json"}
        record = json.loads(Path(client.download_artifacts(version.run_id, f"{folder}/export.json", str(tmp_path))).read_text())
        assert record["passed"] and record["samples"] == export.CHECK_SAMPLES and record["versions"]["torch"].startswith("2.")
        assert 0 <= metrics[f"export/{format_name}_max_abs_diff"] <= export.DEFAULT_TOLERANCE
        assert metrics[f"export/{format_name}_latency_ms"] > 0
        print(f"{format_name}: max |diff| {metrics[f'export/{format_name}_max_abs_diff']:.3g}, "
              f"{metrics[f'export/{format_name}_latency_ms']:.1f} ms vs native {metrics['export/native_latency_ms']:.1f} ms")
    assert record["versions"]["opset"] == export.DEFAULT_OPSET

    # What a deployment does with the file: ONNX Runtime, no detectron2, on a test image
    # preprocessed as cfg.INPUT says (BGR, CHW; 64 px already the test size), answers what the
    # registered model serves.
    onnxruntime = pytest.importorskip("onnxruntime")
    import numpy as np
    from PIL import Image

    (image_file,) = val_image_files(shapes, 1)
    pixels = np.asarray(Image.open(image_file).convert("RGB"))
    session = onnxruntime.InferenceSession(client.download_artifacts(version.run_id, "export/onnx/model.onnx", str(tmp_path)))
    boxes, scores, classes = session.run(None, {"image": pixels[:, :, ::-1].transpose(2, 0, 1).astype("float32")})
    answered, (found,) = support.predict_files(served, name, [image_file], framework_env.admin_auth)
    assert answered == version.version and classes.tolist() == found["class_ids"]
    # The server rounds boxes to 0.01 px.
    np.testing.assert_allclose(boxes, np.asarray(found["boxes"]).reshape(-1, 4), atol=0.005 + export.DEFAULT_TOLERANCE)
    np.testing.assert_allclose(scores, found["scores"], atol=1e-4)


def test_registered_model_holds_weights_only_and_is_servable(trained, d2_python, shapes, tmp_path, framework_env):
    client, name = trained["client"], trained["model_name"]
    candidate = client.get_model_version_by_alias(name, "candidate")
    assert str(candidate.version) == str(trained["registered_version"])
    assert candidate.run_id == trained["run_id"]
    model_uri = f"models:/{name}@candidate"
    model_dir = Path(mlflow.artifacts.download_artifacts(model_uri, dst_path=str(tmp_path / "model")))
    weights = model_dir / "artifacts" / "model_weights.pth"
    keys = subprocess.run([str(d2_python), "-c", "import sys, torch; print(sorted(torch.load(sys.argv[1])))",
                           str(weights)], capture_output=True, text=True, check=True).stdout.strip()
    assert keys == "['model']"  # no optimizer, scheduler or iteration
    assert weights.stat().st_size == pytest.approx(trained["parameter_bytes"], rel=0.01)

    import numpy as np
    from PIL import Image

    val = json.loads((shapes / "annotations" / "val.json").read_text())["images"][:2]
    images = [np.asarray(Image.open(shapes / "images" / image["file_name"]).convert("RGB")) for image in val]
    predicted = support.model_environment_predicts(model_uri, images, tmp_path / "serving")
    assert len(predicted) == 2
    assert all(set(row) == {"boxes", "scores", "classes"} for row in predicted)


def test_the_inference_server_answers_the_registered_model_in_its_schema(trained, served, shapes, framework_env):
    from PIL import Image

    client, name = trained["client"], trained["model_name"]
    version = str(trained["registered_version"])
    # The hook names the classes (the training set's thing_classes) on the version it registers.
    assert json.loads(client.get_model_version(name, version).tags["cvops.class_names"]) == [
        "circle", "square", "triangle"]
    files = val_image_files(shapes, 2)
    answered, predictions = support.predict_files(served, name, files, framework_env.admin_auth)
    assert answered == version and len(predictions) == 2
    for path, found in zip(files, predictions):
        width, height = Image.open(path).size
        assert set(found) == {"boxes", "scores", "class_ids", "class_names"}
        assert len(found["boxes"]) == len(found["scores"]) == len(found["class_ids"]) == len(found["class_names"])
        assert all(0 <= x <= width and 0 <= y <= height for box in found["boxes"] for x, y in (box[:2], box[2:]))
        assert set(found["class_names"]) <= {"circle", "square", "triangle"}


def test_the_inference_server_follows_champion_to_a_new_version_without_failed_requests(trained, served, shapes,
                                                                                       framework_env):
    support.assert_follows_champion_without_failed_requests(served, trained["client"], trained["model_name"],
                                                            val_image_files(shapes, 1)[0], framework_env.admin_auth)


def test_promotion_with_export_exports_the_detector_it_promotes(trained, d2_python, shapes):
    """cvops promote --export in the Detectron2 environment: the promoted version is loaded back
    from the registry and exported, checked on the re-evaluation dataset's first images."""
    from cvops import export

    client, name = trained["client"], trained["model_name"]
    version = support.register_again(client, name, str(trained["registered_version"]))
    promoted = subprocess.run([str(d2_python), "-m", "cvops", "promote", name, version, "--gate", "eval/mAP,min=0",
                               "--reevaluate-on", str(shapes), "--export"], capture_output=True, text=True, timeout=900)
    assert promoted.returncode == 0, promoted.stdout + support.tail(promoted.stderr)
    assert "export torchscript: passed" in promoted.stdout and "export onnx: passed" in promoted.stdout, promoted.stdout
    tags = client.get_model_version(name, version).tags
    assert tags[export.tag("torchscript")] == tags[export.tag("onnx")] == "passed"


def test_cvops_evaluate_scores_the_registered_detector_as_it_is_served(trained, d2_python, shapes):
    """The standard evaluation entry point, on the Detectron2 pyfunc (the same one as for Keras)."""
    client, name = trained["client"], trained["model_name"]
    version = str(trained["registered_version"])
    result = subprocess.run([str(d2_python), "-m", "cvops", "evaluate", f"models:/{name}/{version}", "--dataset",
                             str(shapes), "--batch-size", "3"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, support.tail(result.stderr)
    run_id = result.stdout.split("evaluation run ", 1)[1].split()[0]
    run = client.get_run(run_id)
    assert run.data.tags["cvops.evaluated_model"] == f"models:/{name}/{version}"
    assert 0.0 <= run.data.metrics["eval/mAP"] <= 100.0 and run.data.metrics["inference/latency_p95_ms"] > 0
    per_class = json.loads(Path(client.download_artifacts(run_id, "evaluation/per_class_ap.json")).read_text())
    assert [row["class"] for row in per_class["per_class"]] == ["circle", "square", "triangle"]
    assert sum(row["ground_truth"] for row in per_class["per_class"]) == len(
        json.loads((shapes / "annotations" / "val.json").read_text())["annotations"])
    [dataset_input] = run.inputs.dataset_inputs
    pointer = client.get_model_version(name, version).tags[f"cvops.evaluation.{dataset_input.dataset.digest}"]
    assert json.loads(pointer)["run_id"] == run_id


def test_failed_training_is_told_apart_and_registers_nothing(d2_python, shapes, framework_env, tmp_path):
    result, _, model_name = train(d2_python, shapes, tmp_path, "--fail-at", "12")
    assert result["returncode"] != 0 and "scripted failure" in result["log"]
    client = mlflow.MlflowClient()
    run = client.get_run(result["run_id"])
    assert run.info.status == "FAILED"
    assert run.data.tags["training_outcome"] == "failed at iteration 12"
    # after_train sends what the failing iteration had put (its losses: run_step succeeded) and
    # EvalHook's evaluation at iteration 9; no final evaluation.
    assert sorted(mlflow_history(client, run.info.run_id, "total_loss")) == [12]
    assert sorted(mlflow_history(client, run.info.run_id, "bbox/AP")) == [9]
    assert result["registered_version"] is None
    assert client.search_model_versions(f"name='{model_name}'") == []


def test_example_trains_evaluates_and_registers_as_documented(d2_python, shapes, framework_env, tmp_path):
    model_name = f"d2-example-{time.time_ns()}"
    result = support.run_logged([d2_python, support.EXAMPLES / "detectron2" / "train.py", "--data", shapes,
                                 "--output-dir", tmp_path / "output", "--max-iter", "10", "--model-name", model_name,
                                 "--opts", *detectron2_training.SMALL],
                                log_path=tmp_path / "example.log", timeout_s=900)
    assert result.returncode == 0, support.tail(result.output)
    assert f"cvops: registered {model_name} version 1 as @candidate" in result.output
    client = mlflow.MlflowClient()
    run = client.get_run(client.get_model_version_by_alias(model_name, "candidate").run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["backbone"] == "R-18-FPN"  # derived: no CVOPS_TAG_BACKBONE, no tags=
    evaluation = {f.path for f in client.list_artifacts(run.info.run_id, "evaluation")}
    assert {"evaluation/coco_instances_results.json", "evaluation/pr_curves.png"} <= evaluation


@pytest.mark.parametrize(("model", "described"), [
    ({"BACKBONE": {"NAME": "build_resnet_fpn_backbone"}, "RESNETS": {"DEPTH": 50, "RES5_DILATION": 1}}, "R-50-FPN"),
    ({"BACKBONE": {"NAME": "build_retinanet_resnet_fpn_backbone"}, "RESNETS": {"DEPTH": 101}}, "R-101-FPN"),
    ({"BACKBONE": {"NAME": "build_resnet_backbone"}, "RESNETS": {"DEPTH": 50, "RES5_DILATION": 1}}, "R-50-C4"),
    ({"BACKBONE": {"NAME": "build_resnet_backbone"}, "RESNETS": {"DEPTH": 50, "RES5_DILATION": 2}}, "R-50-DC5"),
    ({"BACKBONE": {"NAME": "build_regnet_fpn_backbone"}}, "regnet_fpn"),
])
def test_backbone_description_names_depth_and_layout(model, described):
    from cvops.integrations.detectron2 import describe_backbone

    assert describe_backbone({"MODEL": model}) == described


def test_hook_placed_after_the_periodic_writer_warns(d2_python, framework_env, tmp_path):
    script = (
        "import cvops\n"
        "from detectron2.engine import TrainerBase, hooks\n"
        "from cvops.integrations.detectron2 import CvopsHook\n"
        "with cvops.start_run(experiment='frameworks-detectron2') as run:\n"
        "    trainer, hook = TrainerBase(), CvopsHook(run)\n"
        "    trainer.register_hooks([hooks.PeriodicWriter([]), hook])\n"
        "    hook.before_train()\n"
    )
    result = support.run_logged([d2_python, "-c", script], log_path=tmp_path / "order.log", timeout_s=300)
    assert result.returncode == 0, support.tail(result.output)
    assert "hooks.insert(-1, hook)" in result.output


SWEEP_MAX_ITER = 10
SWEEP_EVAL_PERIOD = 4  # EvalHook evaluates after iterations 3 and 7, and after the last one


def test_a_sweep_prunes_a_trial_at_detectron2s_periodic_evaluation(d2_python, shapes, framework_env,
                                                                   optuna_storage, tmp_path):
    """`cvops sweep` over the project example (three trials of 10 iterations, one at a time). The
    median pruner starts once two trials have completed, so trials 0 and 1 complete; trial 2's ROI
    heads keep no detection (score threshold 1), so its periodic bbox/AP is detectron2's "no
    predictions" NaN, worse than any median: pruned at its first evaluation, iteration 3."""
    import optuna

    from tests.harness.sweeps import sweep_env

    study_name = f"d2-sweep-{time.time_ns()}"
    command = [str(d2_python), str(support.EXAMPLES / "detectron2" / "train.py"), "--data", str(shapes),
               "--output-dir", str(tmp_path / "output"), "--max-iter", str(SWEEP_MAX_ITER), "--model-name", "",
               "--opts", *detectron2_training.SMALL, "TEST.EVAL_PERIOD", str(SWEEP_EVAL_PERIOD)]
    enqueued = [{"SOLVER.BASE_LR": 0.02, "MODEL.ROI_HEADS.SCORE_THRESH_TEST": 0.0},
                {"SOLVER.BASE_LR": 0.01, "MODEL.ROI_HEADS.SCORE_THRESH_TEST": 0.0},
                {"SOLVER.BASE_LR": 0.02, "MODEL.ROI_HEADS.SCORE_THRESH_TEST": 1.0}]
    spec = tmp_path / "sweep.yaml"
    spec.write_text(json.dumps({  # YAML is a superset of JSON
        "job": {"framework": "detectron2", "image": "not-used-by-local-trials", "command": command,
                "experiment": "frameworks-detectron2-sweep"},
        "study": study_name,
        "search_space": {"SOLVER.BASE_LR": {"type": "float", "low": 0.001, "high": 0.05, "log": True},
                         "MODEL.ROI_HEADS.SCORE_THRESH_TEST": {"type": "categorical", "choices": [0.0, 1.0]}},
        "objective": {"metric": "bbox/AP", "direction": "max"},
        "pruner": {"type": "median", "startup_trials": 2},
        "trials": 3, "parallelism": 1, "enqueue": enqueued,
    }))
    env = sweep_env(framework_env, tmp_path, optuna_storage)
    swept = subprocess.run([sys.executable, "-m", "cvops", "sweep", str(spec)], env=env, cwd=tmp_path,
                           capture_output=True, text=True, timeout=600)
    output = swept.stdout + swept.stderr
    assert swept.returncode == 0, support.tail(output)

    study = optuna.load_study(study_name=study_name, storage=optuna_storage)
    trials = study.get_trials()
    assert [trial.state.name for trial in trials] == ["COMPLETE", "COMPLETE", "PRUNED"], support.tail(output)
    for trial in trials[:2]:  # reported at each periodic evaluation, not at the final one
        assert sorted(trial.intermediate_values) == [3, 7]
    assert list(trials[2].intermediate_values) == [3] and math.isnan(trials[2].intermediate_values[3])

    client = mlflow.MlflowClient(framework_env.url)
    parent_id = study.user_attrs["cvops.parent_run_id"]
    runs = [client.get_run(trial.user_attrs["run_id"]) for trial in trials]
    assert [run.info.status for run in runs] == ["FINISHED", "FINISHED", "KILLED"]
    for number, run in enumerate(runs):
        assert run.data.tags["mlflow.parentRunId"] == parent_id and run.data.tags["trial"] == str(number)
        assert float(run.data.params["SOLVER.BASE_LR"]) == enqueued[number]["SOLVER.BASE_LR"]
        assert run.data.tags["framework"] == "detectron2"
    for trial, run in zip(trials[:2], runs[:2]):
        assert "pruned" not in run.data.tags
        assert sorted(mlflow_history(client, run.info.run_id, "bbox/AP")) == [3, 7, SWEEP_MAX_ITER]
        assert trial.value == pytest.approx(run.data.metrics["bbox/AP"])
    pruned = runs[2]
    assert pruned.data.tags["pruned"] == "true" and pruned.data.tags["pruned_at_step"] == "3"
    assert list(mlflow_history(client, pruned.info.run_id, "bbox/AP")) == [3]
    assert max(mlflow_history(client, pruned.info.run_id, "total_loss")) == 3  # training stopped there
    assert "training_outcome" not in pruned.data.tags  # no "failed at iteration 3": it was stopped
    pruned_log = "\n".join(line for line in output.splitlines() if line.startswith("[trial 2]"))
    assert "Traceback" not in pruned_log and "Exception during training" not in pruned_log, pruned_log
    assert "pruned at step 3" in pruned_log

    parent = client.get_run(parent_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["best_trial"] == str(study.best_trial.number)
    assert parent.data.tags["best_run_id"] == runs[study.best_trial.number].info.run_id
    assert parent.data.metrics["sweep/best_value"] == pytest.approx(study.best_value)
