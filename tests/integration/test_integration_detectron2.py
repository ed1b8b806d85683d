"""Detectron2 hook end to end, checked in the real MLflow server (harness).

What stands in for what: detectron2 is not installable here (no PyPI wheel). The classes below
marked "stand-in" mirror its documented interfaces, written from detectron2's source
(engine/train_loop.py TrainerBase.train and HookBase, utils/events.py EventStorage,
engine/hooks.py PeriodicWriter/EvalHook, TensorboardXWriter clearing images): the same loop
(`for self.iter in range(...)`, `self.iter += 1` on success, `after_train` in `finally`),
`put_scalars(smoothing_hint=...)`, `latest_with_smoothing_hint()`, `put_image` into `_vis_data`.
Where detectron2 IS importable, the same scenario runs on its real TrainerBase, EventStorage,
PeriodicWriter and CfgNode instead (the `detectron2` parameter). No model is trained: losses are
made-up numbers, `model_final.pth` is a stand-in file, as the hook only reads what the trainer left.
"""
import json
import math
import time
import weakref

import numpy as np
import pytest
import yaml

pytestmark = pytest.mark.integration

mlflow = pytest.importorskip("mlflow")

import cvops  # noqa: E402
from cvops.integrations.detectron2 import CvopsHook  # noqa: E402

MAX_ITER = 50
IMAGE_NAME = "Left: GT bounding boxes;  Right: Predicted proposals"  # as visualize_training names it
EVAL_RESULTS = {"bbox": {"AP": 41.5, "AP50": 62.0, "AP75": 44.1, "APs": 20.0, "APm": 45.2, "APl": 55.0, "AP-car": 50.0, "AP-bike": float("nan")}}


# ----------------------------------------------------------------------------- stand-ins
class StandInEventStorage:
    """Stand-in for detectron2.utils.events.EventStorage (the parts hooks and writers use)."""

    def __init__(self, start_iter=0):
        self.iter = start_iter
        self._history = {}
        self._latest = {}
        self._smoothing = {}
        self._vis_data = []

    def put_scalar(self, name, value, smoothing_hint=True, cur_iter=None):
        cur_iter = self.iter if cur_iter is None else cur_iter
        self._history.setdefault(name, []).append((float(value), cur_iter))
        self._latest[name] = (float(value), cur_iter)
        self._smoothing.setdefault(name, smoothing_hint)

    def put_scalars(self, *, smoothing_hint=True, cur_iter=None, **kwargs):
        for name, value in kwargs.items():
            self.put_scalar(name, value, smoothing_hint=smoothing_hint, cur_iter=cur_iter)

    def put_image(self, img_name, img_tensor):
        self._vis_data.append((img_name, img_tensor, self.iter))

    def latest_with_smoothing_hint(self, window_size=20):
        result = {}
        for name, (value, itr) in self._latest.items():
            if self._smoothing[name]:
                recent = [v for v, i in self._history[name] if i > itr - window_size]
                value = float(np.median(recent))
            result[name] = (value, itr)
        return result

    def clear_images(self):
        self._vis_data = []


class StandInHookBase:
    trainer = None

    def before_train(self): ...
    def after_train(self): ...
    def before_step(self): ...
    def after_step(self): ...


class StandInTrainerBase:
    """Stand-in for detectron2.engine.TrainerBase: the same loop and hook calls."""

    def __init__(self):
        self._hooks = []
        self.iter = self.start_iter = 0

    def register_hooks(self, hooks):
        for hook in hooks:
            hook.trainer = weakref.proxy(self)
        self._hooks.extend(hooks)

    def train(self, start_iter, max_iter):
        self.iter = self.start_iter = start_iter
        self.max_iter = max_iter
        self.storage = StandInEventStorage(start_iter)
        try:
            for h in self._hooks:
                h.before_train()
            for self.iter in range(start_iter, max_iter):
                self.storage.iter = self.iter
                for h in self._hooks:
                    h.before_step()
                self.run_step()
                for h in self._hooks:
                    h.after_step()
            self.iter += 1
        finally:
            self.storage.iter = self.iter
            for h in self._hooks:
                h.after_train()


class StandInCfgNode(dict):
    """Stand-in for yacs' CfgNode: a nested dict with dump() to YAML."""

    def dump(self):
        return yaml.safe_dump(json.loads(json.dumps(self)), sort_keys=True)


# --------------------------------------------------------------------- both implementations
def framework(kind):
    """(TrainerBase, HookBase, config factory) from the stand-ins or from detectron2 itself."""
    if kind == "standin":
        def config(output_dir):
            return StandInCfgNode(
                MODEL={"BACKBONE": {"NAME": "build_resnet_fpn_backbone"}, "ROI_HEADS": {"NUM_CLASSES": 2}, "WEIGHTS": ""},
                SOLVER={"BASE_LR": 0.02, "MAX_ITER": MAX_ITER, "STEPS": [30, 40]},
                OUTPUT_DIR=str(output_dir),
            )
        return StandInTrainerBase, StandInHookBase, config
    pytest.importorskip("detectron2", reason="detectron2 is not installed here; the stand-in variant covers the hook")
    from detectron2.config import get_cfg
    from detectron2.engine import HookBase, TrainerBase

    def config(output_dir):
        cfg = get_cfg()
        cfg.MODEL.ROI_HEADS.NUM_CLASSES = 2
        cfg.SOLVER.BASE_LR = 0.02
        cfg.OUTPUT_DIR = str(output_dir)
        return cfg
    return TrainerBase, HookBase, config


def make_trainer(kind, output_dir, fail_at=None):
    trainer_base, hook_base, config = framework(kind)

    class ScriptedTrainer(trainer_base):
        """Puts what a Faster R-CNN run_step puts into the storage; no model."""

        def __init__(self):
            super().__init__()
            self.cfg = config(output_dir)

        def run_step(self):
            if self.iter == fail_at:
                raise RuntimeError("loss is NaN (scripted failure)")
            loss = 1.0 / (self.iter + 1)
            self.storage.put_scalars(total_loss=loss, loss_cls=loss / 2, loss_box_reg=loss / 4, data_time=0.01)
            self.storage.put_scalars(lr=0.02, smoothing_hint=False)
            self.storage.put_scalar("fast_rcnn/cls_accuracy", 0.5 + self.iter / 200)
            if self.iter == 19:
                self.storage.put_image(IMAGE_NAME, np.full((3, 16, 24), 0.5, np.float32))

    class TensorBoardLikeWriterHook(hook_base):
        """PeriodicWriter + TensorboardXWriter's effect on the storage: images cleared every 20."""

        def after_step(self):
            if (self.trainer.iter + 1) % 20 == 0 or self.trainer.iter == self.trainer.max_iter - 1:
                self.trainer.storage.clear_images()

    class EvalAndCheckpointHook(hook_base):
        """What PeriodicCheckpointer and EvalHook leave: model_final.pth, inference/*.json and
        bbox/* scalars put into the storage in after_train (EvalHook's final evaluation)."""

        def after_step(self):
            if self.trainer.iter == self.trainer.max_iter - 1:
                (output_dir / "model_final.pth").write_bytes(b"stand-in weights")

        def after_train(self):
            if self.trainer.iter + 1 >= self.trainer.max_iter:
                (output_dir / "inference").mkdir(exist_ok=True)
                (output_dir / "inference" / "coco_instances_results.json").write_text("[]")
                flat = {f"bbox/{k}": v for k, v in EVAL_RESULTS["bbox"].items()}
                self.trainer.storage.put_scalars(**flat, smoothing_hint=False)

    return ScriptedTrainer(), TensorBoardLikeWriterHook(), EvalAndCheckpointHook()


def history(client, run_id, name):
    return [(m.step, m.value) for m in sorted(client.get_metric_history(run_id, name), key=lambda m: m.step)]


@pytest.fixture(params=["standin", "detectron2"])
def kind(request):
    return request.param


def test_hook_logs_config_scalars_images_evaluation_and_registers_the_model(kind, tracking_env, tmp_path):
    trainer, tensorboard_writer, eval_hook = make_trainer(kind, tmp_path)
    model_name = f"d2-frcnn-{time.time_ns()}"
    with cvops.start_run(experiment="integrations-detectron2", run_name=kind) as run:
        # DefaultTrainer order: ..., EvalHook, [CvopsHook inserted with hooks.insert(-1, ...)], PeriodicWriter.
        trainer.register_hooks([eval_hook, CvopsHook(run, registered_model_name=model_name), tensorboard_writer])
        trainer.train(0, MAX_ITER)
        run_id = run.run_id

    client = mlflow.MlflowClient()
    stored = client.get_run(run_id)
    assert stored.info.status == "FINISHED"
    assert stored.data.tags["framework"] == "detectron2"
    assert stored.data.tags["training_outcome"] == "finished"
    assert stored.data.params["SOLVER.BASE_LR"] == "0.02"
    assert stored.data.params["MODEL.ROI_HEADS.NUM_CLASSES"] == "2"
    config = yaml.safe_load(open(client.download_artifacts(run_id, "config.yaml", str(tmp_path / "dl"))))
    assert config["SOLVER"]["BASE_LR"] == 0.02

    # Written every 20 iterations and at the last one; smoothed scalars are the window median,
    # exactly what detectron2's JSONWriter writes.
    losses = [1.0 / (i + 1) for i in range(MAX_ITER)]
    expected = [(19, np.median(losses[0:20])), (39, np.median(losses[20:40])), (49, np.median(losses[30:50]))]
    assert history(client, run_id, "total_loss") == [(s, pytest.approx(v)) for s, v in expected]
    assert [s for s, _ in history(client, run_id, "lr")] == [19, 39, 49]
    assert "fast_rcnn/cls_accuracy" in stored.data.metrics
    # EvalHook's final evaluation, put into the storage during after_train at iter == max_iter.
    assert history(client, run_id, "bbox/AP") == [(MAX_ITER, 41.5)]
    assert history(client, run_id, "bbox/AP-car") == [(MAX_ITER, 50.0)]
    assert math.isnan(history(client, run_id, "bbox/AP-bike")[0][1])

    images = [f.path for f in client.list_artifacts(run_id, "images/Left_GT_bounding_boxes_Right_Predicted_proposals")]
    assert images == ["images/Left_GT_bounding_boxes_Right_Predicted_proposals/iter_0000019.png"]
    evaluation = {f.path for f in client.list_artifacts(run_id, "evaluation")}
    assert "evaluation/coco_instances_results.json" in evaluation

    (version,) = client.search_model_versions(f"name='{model_name}'")
    assert version.run_id == run_id
    model_dir = mlflow.artifacts.download_artifacts(f"models:/{model_name}/{version.version}", dst_path=str(tmp_path / "model"))
    assert (tmp_path / "model" / "artifacts" / "model_final.pth").read_bytes() == b"stand-in weights"
    assert yaml.safe_load((tmp_path / "model" / "artifacts" / "cvops_model_config.yaml").read_text())["SOLVER"]["BASE_LR"] == 0.02
    assert (tmp_path / "model" / "code" / "cvops" / "integrations" / "detectron2.py").is_file(), model_dir
    if kind == "standin":
        # Serving it needs detectron2 itself, and says how to get it.
        with pytest.raises(Exception, match="detectron2"):
            mlflow.pyfunc.load_model(f"models:/{model_name}/{version.version}")


def test_failed_training_is_told_apart_and_registers_nothing(kind, tracking_env, tmp_path):
    trainer, tensorboard_writer, eval_hook = make_trainer(kind, tmp_path, fail_at=30)
    model_name = f"d2-failed-{time.time_ns()}"
    run = cvops.start_run(experiment="integrations-detectron2", run_name=f"{kind}-fails")
    with pytest.raises(RuntimeError, match="scripted failure"):
        with run:
            trainer.register_hooks([eval_hook, CvopsHook(run, registered_model_name=model_name), tensorboard_writer])
            trainer.train(0, MAX_ITER)
    client = mlflow.MlflowClient()
    stored = client.get_run(run.run_id)
    assert stored.info.status == "FAILED"
    assert stored.data.tags["training_outcome"] == "failed at iteration 30"
    # Iteration 19's periodic write, then after_train sends the last completed iteration (29).
    assert [s for s, _ in history(client, run.run_id, "total_loss")] == [19, 29]
    assert "bbox/AP" not in stored.data.metrics
    assert client.search_model_versions(f"name='{model_name}'") == []


def test_hook_placed_after_the_periodic_writer_warns(caplog):
    class PeriodicWriter(StandInHookBase):
        pass

    trainer = StandInTrainerBase()
    hook = CvopsHook(cvops.tracking.DisabledRun())
    trainer.register_hooks([PeriodicWriter(), hook])
    hook.before_train()
    assert "hooks.insert(-1, hook)" in caplog.text
