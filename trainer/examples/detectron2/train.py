"""Detectron2 example: Faster R-CNN with a small ResNet-18 FPN, trained from random
initialisation on the synthetic shapes, tracked by the cvops hook (config, losses, COCO
evaluation, the final model registered).

    python train.py --data /data/shapes --max-iter 600 --model-name shapes-detectron2

Sized for a CPU in a few minutes (128x128 images, ResNet-18, GroupNorm so training from scratch
works at a small batch); on a GPU it takes seconds. ``--opts KEY VALUE ...`` overrides any config
key, as in detectron2's own tools.

As a trial of ``cvops sweep`` (sweep.yaml), the trial's parameters are config keys
(``SOLVER.BASE_LR``) applied over ``--opts``, each trial writes into ``OUTPUT_DIR/trial-N``, and
the hook reports ``bbox/AP`` of every periodic evaluation (``TEST.EVAL_PERIOD``) for pruning.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def build_config(data: Path, output_dir: Path, max_iter: int, device: str, opts: list[str]):
    from importlib.resources import files

    from detectron2.config import get_cfg

    cfg = get_cfg()
    # The model zoo's config file, read from the installed package: detectron2.model_zoo imports
    # pkg_resources, which setuptools >= 81 no longer has.
    zoo_configs = files("detectron2") / "model_zoo" / "configs"
    cfg.merge_from_file(str(zoo_configs / "COCO-Detection" / "faster_rcnn_R_50_FPN_1x.yaml"))
    cfg.MODEL.WEIGHTS = ""  # random initialisation: nothing is downloaded
    cfg.MODEL.DEVICE = device
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64  # ResNet-18/34 use 64 here
    cfg.MODEL.RESNETS.NORM = "GN"
    cfg.MODEL.FPN.NORM = "GN"
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    cfg.MODEL.ANCHOR_GENERATOR.SIZES = [[16], [32], [48], [64], [96]]
    cfg.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS = [[1.0]]
    cfg.MODEL.RPN.PRE_NMS_TOPK_TRAIN = cfg.MODEL.RPN.PRE_NMS_TOPK_TEST = 500
    cfg.MODEL.RPN.POST_NMS_TOPK_TRAIN = cfg.MODEL.RPN.POST_NMS_TOPK_TEST = 100
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 64
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = len(json.loads((data / "annotations" / "train.json").read_text())["categories"])
    cfg.INPUT.MIN_SIZE_TRAIN = (128,)
    cfg.INPUT.MAX_SIZE_TRAIN = 128
    cfg.INPUT.MIN_SIZE_TEST = 128
    cfg.INPUT.MAX_SIZE_TEST = 128
    cfg.DATASETS.TRAIN = ("shapes_train",)
    cfg.DATASETS.TEST = ("shapes_val",)
    cfg.DATALOADER.NUM_WORKERS = 2
    cfg.SOLVER.IMS_PER_BATCH = 8
    cfg.SOLVER.BASE_LR = 0.02
    cfg.SOLVER.WARMUP_ITERS = 50
    cfg.SOLVER.MAX_ITER = max_iter
    cfg.SOLVER.STEPS = (int(max_iter * 0.75),)
    cfg.SOLVER.CHECKPOINT_PERIOD = max_iter
    cfg.TEST.EVAL_PERIOD = max_iter // 2
    cfg.OUTPUT_DIR = str(output_dir)
    cfg.merge_from_list(opts)
    cfg.freeze()
    return cfg


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("/data/shapes"))
    parser.add_argument("--output-dir", type=Path, default=Path.home() / "output",
                        help="checkpoints and evaluation files (writable; not the read-only /job)")
    parser.add_argument("--max-iter", type=int, default=600)
    parser.add_argument("--model-name", default="shapes-detectron2", help="registered model name")
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="config overrides: KEY VALUE ...")
    args = parser.parse_args(argv)

    import torch
    from detectron2.data.datasets import register_coco_instances
    from detectron2.engine import DefaultTrainer
    from detectron2.evaluation import COCOEvaluator

    import cvops
    import cvops.sweeps
    from cvops.integrations.detectron2 import CvopsHook

    for split in ("train", "val"):
        register_coco_instances(f"shapes_{split}", {}, str(args.data / "annotations" / f"{split}.json"),
                                str(args.data / "images"))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    trial_opts = [part for key, value in cvops.sweeps.trial_params().items() for part in (key, value)]
    output_dir = args.output_dir
    if cvops.sweeps.in_trial():  # parallel trials must not share checkpoints and evaluator files
        output_dir = output_dir / f"trial-{os.environ['CVOPS_TRIAL_NUMBER']}"
    cfg = build_config(args.data, output_dir, args.max_iter, device, [*args.opts, *trial_opts])
    output_dir.mkdir(parents=True, exist_ok=True)

    with cvops.start_run(tags={"task": "detection", "dataset": args.data.name}) as run:

        class Trainer(DefaultTrainer):
            @classmethod
            def build_evaluator(cls, cfg, dataset_name):
                # detectron2's convention (tools/train_net.py); the hook collects evaluator
                # files from OUTPUT_DIR and OUTPUT_DIR/inference.
                return COCOEvaluator(dataset_name, output_dir=str(Path(cfg.OUTPUT_DIR) / "inference"))

            def build_hooks(self):
                hooks = super().build_hooks()
                # Before PeriodicWriter (the last default hook), after EvalHook: see the module doc
                # of cvops.integrations.detectron2.
                hooks.insert(-1, CvopsHook(run, registered_model_name=args.model_name))
                return hooks

        trainer = Trainer(cfg)
        trainer.resume_or_load(resume=False)
        trainer.train()
    return 0


if __name__ == "__main__":
    sys.exit(main())
