"""A user's Detectron2 training script, run by test_detectron2.py in the detectron2 environment:
a real ``DefaultTrainer`` subclass with ``CvopsHook`` and a ``COCOEvaluator`` that writes into
``OUTPUT_DIR`` itself (a user's choice, not detectron2's ``OUTPUT_DIR/inference``), the
example's small ResNet-18 FPN config (random initialisation, GroupNorm), tiny images.

    python detectron2_training.py DATA OUTPUT_DIR MODEL_NAME --max-iter 25 [--fail-at N]

Prints ``RESULT {"run_id", "registered_version", "parameter_bytes"}`` as its last line.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[2] / "trainer" / "examples" / "detectron2" / "train.py"
# Test-sized: 64 px images, two per batch, no loader workers (the machine has two cores).
SMALL = ["SOLVER.IMS_PER_BATCH", "2", "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "64",
         "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "64", "DATALOADER.NUM_WORKERS", "0",
         "SOLVER.WARMUP_ITERS", "5"]


def example_build_config():
    spec = importlib.util.spec_from_file_location("detectron2_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build_config


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("data", type=Path)
    parser.add_argument("output_dir", type=Path)
    parser.add_argument("model_name")
    parser.add_argument("--max-iter", type=int, default=25)
    parser.add_argument("--eval-period", type=int, default=10)
    parser.add_argument("--fail-at", type=int, help="raise in this iteration, as a NaN loss would")
    args = parser.parse_args()

    from detectron2.data.datasets import register_coco_instances
    from detectron2.engine import DefaultTrainer, HookBase
    from detectron2.evaluation import COCOEvaluator

    import cvops
    from cvops.integrations.detectron2 import CvopsHook

    for split in ("train", "val"):
        register_coco_instances(f"shapes_{split}", {}, str(args.data / "annotations" / f"{split}.json"),
                                str(args.data / "images"))
    cfg = example_build_config()(args.data, args.output_dir, args.max_iter, "cpu",
                                 SMALL + ["TEST.EVAL_PERIOD", str(args.eval_period)])
    args.output_dir.mkdir(parents=True, exist_ok=True)

    class FailAt(HookBase):
        def after_step(self):
            if self.trainer.iter == args.fail_at:
                raise RuntimeError(f"loss is NaN at iteration {args.fail_at} (scripted failure)")

    hook = None
    result = {}
    try:
        with cvops.start_run(experiment="frameworks-detectron2", tags={"task": "detection"}) as run:
            result["run_id"] = run.run_id

            class Trainer(DefaultTrainer):
                @classmethod
                def build_evaluator(cls, cfg, dataset_name):
                    return COCOEvaluator(dataset_name, output_dir=cfg.OUTPUT_DIR)

                def build_hooks(self):
                    nonlocal hook
                    hooks = super().build_hooks()
                    hook = CvopsHook(run, registered_model_name=args.model_name)
                    hooks.insert(-1, hook)
                    if args.fail_at is not None:
                        hooks.insert(0, FailAt())
                    return hooks

            trainer = Trainer(cfg)
            trainer.resume_or_load(resume=False)
            trainer.train()
            result["parameter_bytes"] = sum(t.numel() * t.element_size() for t in trainer.model.state_dict().values())
    finally:
        version = hook.registered_version if hook is not None else None
        result["registered_version"] = version.version if version is not None else None
        print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
