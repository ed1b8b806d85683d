"""TF Object Detection API example: the unmodified OD API trains an SSD on the synthetic shapes
from random initialisation; the cvops bridge mirrors its event files, evaluation and checkpoints
into the run, then exports the detector and registers it.

    python train.py --pipeline pipeline.config --model-dir ~/model --model-name shapes-tfod

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
    args = parser.parse_args(argv)

    import cvops
    from cvops.integrations.tfod import TFODBridge

    with cvops.start_run(tags={"task": "detection", "backbone": "ssd_mobilenet_v2_x0.5"}) as run:
        bridge = TFODBridge(run, pipeline_config_path=args.pipeline, model_dir=args.model_dir)
        bridge.train()
        bridge.export(args.model_dir / "exported", registered_model_name=args.model_name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
