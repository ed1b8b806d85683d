"""``cvops evaluate`` and ``cvops promote``: score a registered detector on a dataset, and move an
alias to a version only when it passes its gates, on a fair re-evaluation if asked.

    cvops evaluate models:/shapes@champion --dataset /data/shapes
    cvops promote shapes 7 --gate eval/mAP,min=30 --gate inference/latency_p95_ms,lower,max=50 \\
        --reevaluate-on /data/shapes
"""
from __future__ import annotations

import argparse
import json
import sys

_GATE_HELP = ("METRIC[,lower][,min=V][,max=V][,improvement=V]: higher is better unless 'lower'; absolute "
              "bounds; how much better than the champion (default 0, negative tolerates a regression). Repeat.")


def register(subparsers) -> None:
    evaluate = subparsers.add_parser(
        "evaluate", help="evaluate a registered detector on a detection dataset (an evaluation run)",
        description="Run models:/<name>/<version> or models:/<name>@<alias> (any framework, through MLflow pyfunc) "
                    "on a COCO detection dataset and log COCO AP, per-class AP, PR curves, confusion matrix and "
                    "latency as a run linked to the version (docs/promotion.md).",
    )
    evaluate.add_argument("model_uri", help="models:/<name>/<version> or models:/<name>@<alias>")
    _dataset_arguments(evaluate, "--dataset", required=True)
    evaluate.add_argument("--batch-size", type=int, default=8, help="images per predict call (default 8)")
    evaluate.add_argument("--experiment", default=None, help="experiment of the evaluation run (default model-evaluation)")
    evaluate.set_defaults(func=run_evaluate)

    promote = subparsers.add_parser(
        "promote", help="move an alias (default @champion) to a version if it passes every gate",
        description="Compare a registered version with the alias's current holder on the gates; with "
                    "--reevaluate-on both are evaluated on that dataset by the same code first (docs/promotion.md).",
    )
    promote.add_argument("name", help="registered model name")
    promote.add_argument("version", help="the challenger's version number")
    promote.add_argument("--gate", action="append", required=True, metavar="SPEC", help=_GATE_HELP)
    promote.add_argument("--alias", default="champion", help="the alias to move (default champion)")
    promote.add_argument("--dry-run", action="store_true", help="decide and record, but leave the alias")
    promote.add_argument("--export", action=argparse.BooleanOptionalAction, default=None,
                         help="export the promoted version to ONNX/TorchScript, checked on the first images of "
                              "--reevaluate-on (default: when CVOPS_EXPORT=promote); needs its framework installed")
    _dataset_arguments(promote, "--reevaluate-on", required=False)
    promote.set_defaults(func=run_promote)


def _dataset_arguments(parser: argparse.ArgumentParser, flag: str, *, required: bool) -> None:
    parser.add_argument(flag, dest="dataset", required=required, metavar="PATH",
                        help="COCO detection JSON, or a folder as trainer/examples/make_shapes.py writes it")
    parser.add_argument("--split", default="val", help="the split of a dataset folder (default val)")
    parser.add_argument("--images-dir", default=None,
                        help="where file_name is relative to (default: images/ beside annotations/)")
    parser.add_argument("--class-names", default=None, metavar="A,B,...",
                        help="the model's class names by class id, when its version has no cvops.class_names tag")


def parse_gate(spec: str):
    from cvops.registry import Gate

    metric, *options = [part.strip() for part in spec.split(",")]
    if not metric:
        raise ValueError(f"--gate {spec!r}: starts with the metric name")
    settings: dict = {}
    for option in options:
        if option == "lower":
            settings["higher_is_better"] = False
            continue
        key, equals, value = option.partition("=")
        field = {"min": "min_value", "max": "max_value", "improvement": "min_improvement"}.get(key)
        if not equals or field is None:
            raise ValueError(f"--gate {spec!r}: unknown option {option!r} (lower, min=V, max=V, improvement=V)")
        try:
            settings[field] = float(value)
        except ValueError:
            raise ValueError(f"--gate {spec!r}: {key}={value!r} is not a number") from None
    return Gate(metric, **settings)


def _dataset(args: argparse.Namespace):
    from cvops.detection_dataset import load_detection_dataset

    return load_detection_dataset(args.dataset, split=args.split, images_dir=args.images_dir)


def _class_names(args: argparse.Namespace):
    return [name.strip() for name in args.class_names.split(",")] if args.class_names else None


def _fail(command: str, error: Exception) -> int:
    print(f"cvops {command}: {error}", file=sys.stderr)
    return 2


def run_evaluate(args: argparse.Namespace) -> int:
    from mlflow.exceptions import MlflowException

    from cvops.detection_dataset import DatasetError
    from cvops.evaluation import EVALUATION_EXPERIMENT, evaluate_registered_model

    try:
        result = evaluate_registered_model(args.model_uri, _dataset(args), class_names=_class_names(args),
                                           batch_size=args.batch_size, experiment=args.experiment or EVALUATION_EXPERIMENT)
    except (DatasetError, ValueError, RuntimeError, MlflowException) as error:
        return _fail("evaluate", error)
    print(f"{result.model_uri} on dataset digest {result.dataset_digest}: evaluation run {result.run_id}")
    print(json.dumps({key: round(value, 4) for key, value in sorted(result.metrics.items())}, indent=2))
    return 0


def run_promote(args: argparse.Namespace) -> int:
    from mlflow.exceptions import MlflowException

    from cvops.detection_dataset import DatasetError
    from cvops.registry import promote

    try:
        gates = [parse_gate(spec) for spec in args.gate]
        decision = promote(args.name, args.version, gates, alias=args.alias, dry_run=args.dry_run,
                           reevaluate_on=_dataset(args) if args.dataset else None, class_names=_class_names(args),
                           export=args.export)
    except (DatasetError, ValueError, RuntimeError, MlflowException) as error:
        return _fail("promote", error)
    print(decision.summary())
    return 0 if decision.promoted or args.dry_run else 1
