"""The real, unmodified TF Object Detection API (TF 2.15.1, Keras 2) through ``cvops tfod`` and the
project example, against the harness's tracking server: model_main_tf2.py trains a tiny SSD on
synthetic shapes, its evaluator and exporter_main_v2.py run as the bridge starts them, and what
arrives in MLflow is compared with what the OD API wrote on disk.

model_main_tf2.py trains in iterations of 100 steps, so 200 steps is the smallest run with two
training points (steps 100 and 200) and a derived checkpoint interval (200) that differs from
the OD API's default (1000, which would never save the last step).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.frameworks.support import (
    EXAMPLES, assert_detections_inside, assert_follows_champion_without_failed_requests, model_environment_predicts,
    predict_files, register_again, run_logged, small_pipeline, tail,
)

pytestmark = [pytest.mark.frameworks, pytest.mark.integration]

mlflow = pytest.importorskip("mlflow")
tf = pytest.importorskip("tensorflow")
event_file_loader = pytest.importorskip("tensorboard.backend.event_processing.event_file_loader")
tensor_util = pytest.importorskip("tensorboard.util.tensor_util")

import cvops  # noqa: E402

STEPS = 200
EVAL_MAP50 = "eval/DetectionBoxes_Precision/mAP@.50IOU"  # MLflow rejects '@': stored sanitised


@pytest.fixture(scope="module")
def tfod_python(framework_python):
    return framework_python("tfod")


@pytest.fixture(scope="module")
def shapes(tfod_python, tmp_path_factory):
    data = tmp_path_factory.mktemp("shapes")
    made = run_logged([tfod_python, EXAMPLES / "make_shapes.py", data, "--train", "16", "--val", "4", "--size", "64",
                       "--max-objects", "2", "--tfrecord", "required"], log_path=data / "make_shapes.log", timeout_s=300)
    assert made.returncode == 0, tail(made.output)
    return data


def events(directory: Path) -> dict[str, dict[int, float]]:
    """tag -> {step: value} of the scalars in the event files under ``directory``."""
    found: dict[str, dict[int, float]] = {}
    for path in sorted(directory.rglob("events.out.tfevents.*")):
        for event in event_file_loader.EventFileLoader(str(path)).Load():
            for value in event.summary.value:
                if value.metadata.plugin_data.plugin_name == "scalars":
                    found.setdefault(value.tag, {})[event.step] = float(tensor_util.make_ndarray(value.tensor))
    return found


def history(client, run_id, original_name) -> dict[int, float]:
    return {m.step: m.value for m in client.get_metric_history(run_id, cvops.sanitize_metric_name(original_name))}


def artifact_paths(client, run_id, path=None) -> set[str]:
    paths = set()
    for item in client.list_artifacts(run_id, path):
        paths |= artifact_paths(client, run_id, item.path) if item.is_dir else {item.path}
    return paths


@pytest.fixture(scope="module")
def cli_run(tfod_python, framework_env, shapes, tmp_path_factory):
    """One ``cvops tfod`` run, as a user types it, with the evaluator, the exporter and a
    registered model: --num_train_steps=200 overrides the config's 1500 steps."""
    work = tmp_path_factory.mktemp("cli")
    pipeline = small_pipeline(shapes, work / "pipeline.config")
    name = f"tfod-shapes-{time.time_ns()}"
    started = time.monotonic()
    result = run_logged(
        [tfod_python, "-m", "cvops", "tfod", f"--model_dir={work / 'model'}", f"--pipeline_config_path={pipeline}",
         f"--export_dir={work / 'exported'}", f"--registered_model_name={name}", "--experiment=framework-tfod",
         "--run_name=cli", "--eval_timeout_s=60", "--", f"--num_train_steps={STEPS}"],
        log_path=work / "cvops-tfod.log", timeout_s=1200, env={**os.environ, "CVOPS_EXPORT": "register"},
    )
    print(f"cvops tfod: {time.monotonic() - started:.0f} s")
    assert result.returncode == 0, tail(result.output)
    client = mlflow.MlflowClient()
    version = client.get_model_version_by_alias(name, "candidate")
    return {"work": work, "name": name, "version": version, "run_id": version.run_id, "client": client,
            "output": result.output}


def test_training_and_evaluation_arrive_as_the_od_api_wrote_them(cli_run):
    client, run_id, model_dir = cli_run["client"], cli_run["run_id"], cli_run["work"] / "model"
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    train = events(model_dir / "train")
    assert {"Loss/total_loss", "Loss/localization_loss", "learning_rate"} <= set(train)
    for tag, values in train.items():
        assert history(client, run_id, tag) == pytest.approx(values), tag
    assert set(train["Loss/total_loss"]) == {100, STEPS}

    evaluated = events(model_dir / "eval")
    assert STEPS in evaluated["DetectionBoxes_Precision/mAP"], "the final checkpoint was evaluated"
    for tag, values in evaluated.items():
        assert history(client, run_id, f"eval/{tag}") == pytest.approx(values), tag

    mapping_file = client.download_artifacts(run_id, "cvops/name_mapping.json", str(cli_run["work"] / "mapping"))
    mapping = json.loads(Path(mapping_file).read_text())
    assert mapping[cvops.sanitize_metric_name(EVAL_MAP50)] == EVAL_MAP50

    params, tags = run.data.params, run.data.tags
    assert params["meta_architecture"] == "ssd" and params["num_classes"] == "3"
    assert params["num_steps"] == "1500" and params["num_train_steps"] == str(STEPS)
    assert params["checkpoint_every_n"] == str(STEPS)
    assert tags["framework"] == "tfod" and tags["backbone"] == "ssd_mobilenet_v2_keras"


def test_final_step_is_checkpointed_logged_and_exported(cli_run):
    client, run_id, work = cli_run["client"], cli_run["run_id"], cli_run["work"]
    # model_main_tf2.py saves step 0 (ckpt-1); the derived --checkpoint_every_n=200 saves the end.
    final = tf.train.load_checkpoint(str(work / "model" / "ckpt-2"))
    assert int(final.get_tensor("step/.ATTRIBUTES/VARIABLE_VALUE")) == STEPS
    assert history(client, run_id, "checkpoint/number") == {0: 1.0, STEPS: 2.0}
    assert {"checkpoints/ckpt-2/ckpt-2.index"} <= artifact_paths(client, run_id, "checkpoints/ckpt-2")

    # The exporter's own checkpoint holds the final step's weights. Step 0's checkpoint holds
    # none (the model is built by the first step), which is why exporting it fails.
    exported = tf.train.load_checkpoint(str(work / "exported" / "checkpoint"))
    weights = [key for key in exported.get_variable_to_shape_map()
               if key.startswith("model/") and key.endswith("VARIABLE_VALUE") and final.has_tensor(key)]
    assert weights
    assert all(np.array_equal(exported.get_tensor(key), final.get_tensor(key)) for key in weights)
    first = tf.train.load_checkpoint(str(work / "model" / "ckpt-1"))
    assert not any(first.has_tensor(key) for key in weights)


def test_exported_model_is_evaluated_and_registered_as_candidate(cli_run):
    client, run_id, version = cli_run["client"], cli_run["run_id"], cli_run["version"]
    assert f"cvops: registered {cli_run['name']} version {version.version} as @candidate" in cli_run["output"]
    artifacts = artifact_paths(client, run_id, "evaluation")
    assert {"evaluation/pr_curves.png", "evaluation/confusion_matrix.png", "evaluation/per_class_ap.json",
            "evaluation/samples/000.png"} <= artifacts
    per_class = json.loads(Path(client.download_artifacts(run_id, "evaluation/per_class_ap.json",
                                                          str(cli_run["work"] / "per_class"))).read_text())
    assert [row["class"] for row in per_class["per_class"]] == ["circle", "square", "triangle"]
    for name in ("eval/mAP", "eval/AP50", "inference/latency_p50_ms", "inference/images_per_s"):
        assert set(history(client, run_id, name)) == {STEPS}, name


def test_registered_model_is_servable_from_its_own_requirements(cli_run, shapes, tmp_path):
    from PIL import Image

    images = [np.asarray(Image.open(path).convert("RGB")) for path in sorted((shapes / "images" / "val").glob("*.png"))[:2]]
    predictions = model_environment_predicts(f"models:/{cli_run['name']}@candidate", images, tmp_path)
    assert len(predictions) == len(images)
    for image, found in zip(images, predictions):
        boxes = np.asarray(found["boxes"]).reshape(-1, 4)
        assert len(boxes) == len(found["scores"]) == len(found["classes"]) > 0
        assert (boxes >= -1).all() and (boxes[:, [0, 2]] <= image.shape[1] + 1).all()
        assert set(found["classes"]) <= {1, 2, 3}


@pytest.fixture(scope="module")
def served(cli_run, tfod_python, serve_champion):
    """The registered version as @champion, served over HTTP from the OD API environment."""
    cli_run["client"].set_registered_model_alias(cli_run["name"], "champion", cli_run["version"].version)
    return serve_champion(tfod_python, cli_run["name"])


def test_the_inference_server_answers_the_registered_model_in_its_schema(cli_run, served, shapes, framework_env):
    client, name, version = cli_run["client"], cli_run["name"], cli_run["version"].version
    # The bridge names the classes from the pipeline's label map, whose ids start at 1.
    assert json.loads(client.get_model_version(name, version).tags["cvops.class_names"]) == {
        "1": "circle", "2": "square", "3": "triangle"}
    files = sorted((shapes / "images" / "val").glob("*.png"))[:2]
    answered, predictions = predict_files(served, name, files, framework_env.admin_auth)
    assert answered == version and len(predictions) == len(files)
    for path, found in zip(files, predictions):
        assert_detections_inside(found, path, {"circle", "square", "triangle"})


def test_the_inference_server_follows_champion_to_a_new_version_without_failed_requests(cli_run, served, shapes,
                                                                                       framework_env):
    image_file = sorted((shapes / "images" / "val").glob("*.png"))[0]
    assert_follows_champion_without_failed_requests(served, cli_run["client"], cli_run["name"], image_file,
                                                    framework_env.admin_auth)


def test_registration_exports_onnx_with_its_parity_recorded(cli_run, shapes, tmp_path):
    from PIL import Image

    from cvops import export

    client, name = cli_run["client"], cli_run["name"]
    version = client.get_model_version(name, cli_run["version"].version)
    assert version.tags[export.tag("onnx")] == "passed", version.tags[export.tag("onnx")]
    assert {f.path for f in client.list_artifacts(version.run_id, "export/onnx")} == {"export/onnx/model.onnx",
                                                                                   "export/onnx/export.json"}
    record = json.loads(Path(client.download_artifacts(version.run_id, "export/onnx/export.json", str(tmp_path))).read_text())
    assert record["passed"] and record["samples"] == 4
    assert record["versions"]["tensorflow"] == "2.15.1" and record["versions"]["opset"] == export.DEFAULT_OPSET
    metrics = {m.key: m.value for m in client.get_logged_model(version.source.removeprefix("models:/")).metrics}
    assert 0 <= metrics["export/onnx_max_abs_diff"] <= export.DEFAULT_TOLERANCE
    assert metrics["export/onnx_latency_ms"] > 0 and metrics["export/native_latency_ms"] > 0
    print(f"onnx: max |diff| {metrics['export/onnx_max_abs_diff']:.3g}, {metrics['export/onnx_latency_ms']:.1f} ms "
          f"vs native {metrics['export/native_latency_ms']:.1f} ms")

    # The file runs in ONNX Runtime without TensorFlow: the OD API signature's outputs.
    onnxruntime = pytest.importorskip("onnxruntime")
    session = onnxruntime.InferenceSession(client.download_artifacts(version.run_id, "export/onnx/model.onnx", str(tmp_path)))
    image = np.asarray(Image.open(sorted((shapes / "images" / "val").glob("*.png"))[0]).convert("RGB"))
    outputs = dict(zip([o.name for o in session.get_outputs()], session.run(None, {"input_tensor": image[None]})))
    count = int(outputs["num_detections"][0])
    assert count > 0 and ((outputs["detection_boxes"][0][:count] >= 0) & (outputs["detection_boxes"][0][:count] <= 1)).all()


def test_promotion_with_export_exports_the_detector_it_promotes(cli_run, tfod_python, shapes):
    """cvops promote --export in the OD API environment: the promoted version is loaded back from
    the registry and exported to ONNX, checked on the re-evaluation dataset's first images."""
    from cvops import export

    client, name = cli_run["client"], cli_run["name"]
    version = register_again(client, name, cli_run["version"].version)
    promoted = subprocess.run([str(tfod_python), "-m", "cvops", "promote", name, version, "--gate", "eval/mAP,min=0",
                               "--reevaluate-on", str(shapes)], capture_output=True, text=True, timeout=900,
                              env={**os.environ, "CVOPS_EXPORT": "promote"})
    assert promoted.returncode == 0, promoted.stdout + tail(promoted.stderr)
    assert "export onnx: passed" in promoted.stdout, promoted.stdout
    assert client.get_model_version(name, version).tags[export.tag("onnx")] == "passed"


def test_checkpoint_interval_that_never_saves_the_final_step_is_refused_before_training(
        tfod_python, framework_env, shapes, tmp_path):
    pipeline = small_pipeline(shapes, tmp_path / "pipeline.config")
    result = run_logged(
        [tfod_python, "-m", "cvops", "tfod", f"--model_dir={tmp_path / 'model'}", f"--pipeline_config_path={pipeline}",
         "--experiment=framework-tfod", "--run_name=refused", "--", "--num_train_steps=300", "--checkpoint_every_n=200"],
        log_path=tmp_path / "cvops-tfod.log", timeout_s=300,
    )
    assert result.returncode == 2, tail(result.output)
    assert "--checkpoint_every_n=200 with 300 training steps" in result.output
    assert "would never save step 300" in result.output
    assert not (tmp_path / "model").exists()
    assert not mlflow.search_runs(experiment_names=["framework-tfod"], filter_string="attributes.run_name = 'refused'",
                                  output_format="list")


def test_example_finishes_with_a_model_main_flag_and_registers(tfod_python, framework_env, shapes, tmp_path, monkeypatch):
    pipeline = small_pipeline(shapes, tmp_path / "pipeline.config")
    name = f"shapes-tfod-{time.time_ns()}"
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "framework-tfod-example")
    result = run_logged(
        [tfod_python, "train.py", "--pipeline", pipeline, "--model-dir", tmp_path / "model", "--model-name", name,
         "--", "--num_train_steps=100"],
        log_path=tmp_path / "train.log", timeout_s=1200, cwd=EXAMPLES / "tfod",
    )
    assert result.returncode == 0, tail(result.output)
    client = mlflow.MlflowClient()
    version = client.get_model_version_by_alias(name, "candidate")
    run = client.get_run(version.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["num_train_steps"] == "100" and run.data.params["checkpoint_every_n"] == "100"
    assert 100 in history(client, version.run_id, "eval/DetectionBoxes_Precision/mAP")
    assert history(client, version.run_id, "checkpoint/number") == {0: 1.0, 100: 2.0}
    assert set(history(client, version.run_id, "eval/mAP")) == {100}


def test_failed_training_ends_the_run_failed_with_the_trainers_exit_code(tfod_python, framework_env, shapes, tmp_path):
    pipeline = small_pipeline(shapes, tmp_path / "pipeline.config")
    pipeline.write_text(pipeline.read_text().replace("tfrecord/train.record", "tfrecord/missing.record"))
    result = run_logged(
        [tfod_python, "-m", "cvops", "tfod", f"--model_dir={tmp_path / 'model'}", f"--pipeline_config_path={pipeline}",
         "--experiment=framework-tfod", "--run_name=fails", "--no_eval", "--", "--num_train_steps=100"],
        log_path=tmp_path / "cvops-tfod.log", timeout_s=300,
    )
    assert result.returncode != 0
    assert "cvops tfod: model_main_tf2.py exited with" in result.output
    (run,) = mlflow.search_runs(experiment_names=["framework-tfod"], filter_string="attributes.run_name = 'fails'",
                                output_format="list")
    assert run.info.status == "FAILED"


# Long enough that the evaluation of step 0 (the first checkpoint) arrives before training ends:
# the continuous evaluator's pass over it is dropped when training ends first.
SWEEP_STEPS = 1000
SWEEP_OBJECTIVE = "eval/Loss/total_loss"  # the evaluator's own loss on the evaluation records


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("CVOPS_TFOD_SWEEP") != "1",
                    reason="three real OD API trainings with evaluators take 10-20 minutes on 2 busy CPU cores, "
                           "past the framework tier's CI budget; run by hand with CVOPS_TFOD_SWEEP=1")
def test_a_sweep_prunes_a_trial_at_the_od_api_evaluators_result(tfod_python, framework_env, shapes, optuna_storage,
                                                                 tmp_path):
    """`cvops sweep` over `cvops tfod` (tfod_trial.py: the trial's classification_weight in
    pipeline.config), three trials of 1000 steps, one at a time; the median pruner starts once two
    trials have completed. The evaluator evaluates step 0's checkpoint first, while training runs;
    trial 2 weighs its classification loss 1000 times, so its evaluation loss at step 0 is far above
    the median: pruned at step 0, its trainer and evaluator stopped, nothing exported."""
    import optuna
    import psutil

    from tests.frameworks import tfod_trial
    from tests.harness.sweeps import sweep_env

    study_name = f"tfod-sweep-{time.time_ns()}"
    pipeline = small_pipeline(shapes, tmp_path / "pipeline.config")
    command = [str(tfod_python), tfod_trial.__file__, str(pipeline), str(tmp_path), "--",
               f"--num_train_steps={SWEEP_STEPS}"]
    enqueued = [{"classification_weight": 1.0}, {"classification_weight": 2.0}, {"classification_weight": 1000.0}]
    spec = tmp_path / "sweep.yaml"
    spec.write_text(json.dumps({  # YAML is a superset of JSON
        "job": {"framework": "tfod", "image": "not-used-by-local-trials", "command": command,
                "experiment": "framework-tfod-sweep"},
        "study": study_name,
        "search_space": {"classification_weight": {"type": "float", "low": 0.5, "high": 2000, "log": True}},
        "objective": {"metric": SWEEP_OBJECTIVE, "direction": "min"},
        "pruner": {"type": "median", "startup_trials": 2},
        "trials": 3, "parallelism": 1, "enqueue": enqueued,
    }))
    started = time.monotonic()
    swept = run_logged([sys.executable, "-m", "cvops", "sweep", spec], log_path=tmp_path / "sweep.log",
                       timeout_s=2400, cwd=tmp_path, env=sweep_env(framework_env, tmp_path, optuna_storage))
    print(f"cvops sweep of 3 OD API trials: {time.monotonic() - started:.0f} s")
    assert swept.returncode == 0, tail(swept.output)

    study = optuna.load_study(study_name=study_name, storage=optuna_storage)
    trials = study.get_trials()
    assert [trial.state.name for trial in trials] == ["COMPLETE", "COMPLETE", "PRUNED"], tail(swept.output)
    for trial in trials:  # step 0's evaluation is intermediate; the final one is the value
        assert list(trial.intermediate_values) == [0], (trial.number, tail(swept.output))
    assert trials[2].intermediate_values[0] > 100 * trials[0].intermediate_values[0]

    client = mlflow.MlflowClient(framework_env.url)
    parent_id = study.user_attrs["cvops.parent_run_id"]
    runs = [client.get_run(trial.user_attrs["run_id"]) for trial in trials]
    assert [run.info.status for run in runs] == ["FINISHED", "FINISHED", "KILLED"]
    for number, run in enumerate(runs):
        assert run.data.tags["mlflow.parentRunId"] == parent_id and run.data.tags["trial"] == str(number)
        assert run.data.tags["framework"] == "tfod"
    for trial, run in zip(trials[:2], runs[:2]):
        assert "pruned" not in run.data.tags
        assert set(history(client, run.info.run_id, SWEEP_OBJECTIVE)) == {0, SWEEP_STEPS}
        assert trial.value == pytest.approx(run.data.metrics[SWEEP_OBJECTIVE])
    pruned = runs[2].info.run_id
    assert runs[2].data.tags["pruned"] == "true" and runs[2].data.tags["pruned_at_step"] == "0"
    assert set(history(client, pruned, SWEEP_OBJECTIVE)) == {0}  # no final evaluation
    assert SWEEP_STEPS not in history(client, pruned, "checkpoint/number")  # training stopped before the end
    assert not artifact_paths(client, pruned, "evaluation")  # nothing exported or evaluated after pruning
    trial_dir = str(tmp_path / "trial-2")
    assert not [process for process in psutil.process_iter(["cmdline"])
                if any(trial_dir in part for part in process.info["cmdline"] or ())]

    parent = client.get_run(parent_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["best_trial"] == str(study.best_trial.number)
    assert parent.data.tags["best_run_id"] == runs[study.best_trial.number].info.run_id
