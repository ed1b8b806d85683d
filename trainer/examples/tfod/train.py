"""TF Object Detection API example: the unmodified OD API trains an SSD on the synthetic shapes
from random initialisation; the cvops bridge mirrors its event files, evaluation and checkpoints
into the run, then exports the detector and registers it.

    python train.py --pipeline pipeline.config --model-dir ~/model --model-name shapes-tfod

Other flags, or everything after ``--``, go to model_main_tf2.py unchanged (trainer and evaluator):

    python train.py --pipeline pipeline.config -- --num_train_steps=500 --checkpoint_every_n=500

The bridge saves the final step (it picks ``--checkpoint_every_n`` when not given: 500 for the
1500 steps of pipeline.config) and evaluates it, then exports, registers and evaluates the model.
The data (TFRecords + label map) come from ``make_shapes.py --size 128 --max-objects 3`` run
where TensorFlow is installed (the tfod image has it).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pipeline", type=Path, default=Path("pipeline.config"))
    parser.add_argument("--model-dir", type=Path, default=Path.home() / "model",
                        help="checkpoints and event files (writable; not the read-only /job)")
    parser.add_argument("--model-name", default="shapes-tfod", help="registered model name")
    argv = sys.argv[1:] if argv is None else argv
    own, after_dashes = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    args, model_main_args = parser.parse_known_args(own)

    import cvops
    from cvops.integrations.tfod import TFODBridge

    with cvops.start_run(tags={"task": "detection", "backbone": "ssd_mobilenet_v2_x0.5"}) as run:
        bridge = TFODBridge(
            run, pipeline_config_path=args.pipeline, model_dir=args.model_dir, train_args=model_main_args + after_dashes
        )
        bridge.train()
        if bridge.pruned:  # a trial of `cvops sweep` that the sweep stopped: its run has ended
            return 0
        bridge.export(args.model_dir / "exported", registered_model_name=args.model_name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
