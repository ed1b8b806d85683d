"""``cvops tfod``: run the TF Object Detection API's model_main_tf2.py under the cvops bridge.

A drop-in for ``python model_main_tf2.py --model_dir=… --pipeline_config_path=…``: the same two
flags, model_main's other flags after ``--`` passed through unchanged
(``cvops tfod --model_dir=out --pipeline_config_path=p.config -- --num_train_steps=25000``),
training and evaluation streamed to the tracking server, and with ``--export_dir`` the
exporter's SavedModel logged, registered (alias ``candidate``) and evaluated on the evaluation
records. A ``--num_train_steps``/``--checkpoint_every_n`` combination that would not save the
final step is refused before a run is created (see cvops.integrations.tfod.plan_training).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "tfod", help="train (and export) with the TF Object Detection API, tracked",
        description=__doc__.split("\n\n")[0].replace("``", "'"),
    )
    parser.add_argument("--model_dir", required=True, type=Path)
    parser.add_argument("--pipeline_config_path", required=True, type=Path)
    parser.add_argument("--export_dir", type=Path, help="run exporter_main_v2.py into this directory after training")
    parser.add_argument("--registered_model_name", help="register the exported model under this name")
    parser.add_argument("--experiment", help="MLflow experiment (default: MLFLOW_EXPERIMENT_NAME)")
    parser.add_argument("--run_name")
    parser.add_argument("--no_eval", action="store_true", help="do not start the evaluation process")
    parser.add_argument("--eval_timeout_s", type=int, default=300,
                        help="the evaluator alongside training gives up after waiting this long for a new "
                             "checkpoint (default 300); the final checkpoint is evaluated regardless")
    parser.add_argument("--model_main", type=Path, help="model_main_tf2.py (default: from the object_detection package)")
    parser.add_argument("--exporter", type=Path, help="exporter_main_v2.py (default: from the object_detection package)")
    parser.add_argument("model_main_args", nargs=argparse.REMAINDER, help="after --: flags for model_main_tf2.py")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import cvops
    from cvops.integrations.pipeline_config import PipelineConfigError, read_pipeline_config
    from cvops.integrations.tfod import FinalEvaluationError, TFODBridge, plan_training

    model_main_args = args.model_main_args[1:] if args.model_main_args[:1] == ["--"] else args.model_main_args
    try:
        plan_training(read_pipeline_config(args.pipeline_config_path), model_main_args)  # before a run exists
        with cvops.start_run(experiment=args.experiment, run_name=args.run_name) as tracked:
            bridge = TFODBridge(
                tracked,
                pipeline_config_path=args.pipeline_config_path,
                model_dir=args.model_dir,
                model_main=args.model_main,
                exporter=args.exporter,
                run_eval=not args.no_eval,
                eval_timeout_s=args.eval_timeout_s,
                train_args=model_main_args,
            )
            bridge.train()
            if args.export_dir and not bridge.pruned:  # a pruned sweep trial's model is not worth exporting
                bridge.export(args.export_dir, registered_model_name=args.registered_model_name)
    except (PipelineConfigError, FileNotFoundError) as error:
        print(f"cvops tfod: {error}", file=sys.stderr)
        return 2
    except subprocess.CalledProcessError as error:
        # The run has ended FAILED; everything the process wrote before failing is logged.
        print(f"cvops tfod: {Path(error.cmd[1]).name} exited with {error.returncode}", file=sys.stderr)
        return error.returncode
    except FinalEvaluationError as error:
        print(f"cvops tfod: {error}", file=sys.stderr)
        return 1
    return 0
