"""The inference server (services/serving) per framework: Keras, Detectron2, TF OD API.

    python -m bench.serving_frameworks [--quick|--full] [--frameworks keras,detectron2,tfod]

Requests/s and p50/p95 latency at batch 1 and 8 on the CPU, and moving @champion under load, for
one detector of each framework, each served by our server running in an environment with that
framework (what its image holds with SERVING_MODEL_REQUIREMENTS set):
* Keras: the box detector of the serving tests (tests/harness/serving.py; 32 px input, images
  resized to it), in this environment;
* Detectron2: the example's ResNet-18 FPN trained 25 iterations on 64 px shapes
  (tests/frameworks/detectron2_training.py), in the detectron2 environment;
* TF OD API: the example's SSD MobileNetV2 trained 200 steps at 64 px by ``cvops tfod``, in the
  OD API environment (tests/frameworks/environments.py builds both from ../shared/wheels).
Every model is sent the same 64 px PNG validation images of make_shapes, by CLIENTS concurrent
clients in a closed loop for a fixed time (10 s quick, 30 s full) after a warm-up. Then a new
version of the same model is registered and @champion moved to it while the clients keep
sending (batch 1): requests that failed, and how long until the new version answered. Last,
the Keras model in this process, run the two ways side by side: its pyfunc's predict (Keras'
Model.predict) and the direct call the server makes (cvops.detection_schema.model_predict).
"""
from __future__ import annotations

import io
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
from mlflow import MlflowClient

from bench.report import median, parse_args, print_table, save
from bench.serving import CLIENTS, measure, switch_under_load
from bench.stack import Stack
from tests.frameworks import detectron2_training, environments
from tests.frameworks.support import EXAMPLES, register_again, run_logged, small_pipeline, tail
from tests.harness.serving import ServingServer, prediction_request, register_box_detector

FRAMEWORKS = ("keras", "detectron2", "tfod")
BATCHES = (1, 8)
DETECTRON2_ITERATIONS = 25
TFOD_STEPS = 200
CALLS = 30


def make_shapes(python: Path, data: Path, log: Path, tfrecord: bool) -> None:
    """64 px shapes: COCO annotations for Detectron2 and, for the OD API, TFRecords (written with
    TensorFlow, so by an interpreter that has it)."""
    made = run_logged([python, EXAMPLES / "make_shapes.py", data, "--train", "16", "--val", str(max(BATCHES)),
                       "--size", "64", "--max-objects", "2", "--tfrecord", "required" if tfrecord else "off"],
                      log_path=log, timeout_s=300)
    assert made.returncode == 0, tail(made.output)


def train_detectron2(python: Path, data: Path, work: Path, name: str, env: dict[str, str]) -> None:
    trained = run_logged([python, detectron2_training.__file__, data, work / "output", name, "--max-iter",
                          str(DETECTRON2_ITERATIONS)], log_path=work / "train.log", timeout_s=1800, env=env)
    assert trained.returncode == 0, tail(trained.output)


def train_tfod(python: Path, data: Path, work: Path, name: str, env: dict[str, str]) -> None:
    trained = run_logged(
        [python, "-m", "cvops", "tfod", f"--model_dir={work / 'model'}",
         f"--pipeline_config_path={small_pipeline(data, work / 'pipeline.config')}", f"--export_dir={work / 'exported'}",
         f"--registered_model_name={name}", "--experiment=bench-serving", "--eval_timeout_s=60", "--",
         f"--num_train_steps={TFOD_STEPS}"], log_path=work / "train.log", timeout_s=3600, env=env)
    assert trained.returncode == 0, tail(trained.output)


def register_detector(framework: str, python: Path, data: Path, work: Path, name: str) -> None:
    """Train (or, for Keras, build) and register one detector as ``name``; the process
    environment points at the tracking server."""
    if framework == "keras":
        register_box_detector(name, class_id=1)
        return
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(environments.REPO_ROOT / "trainer" / "src")}
    (train_detectron2 if framework == "detectron2" else train_tfod)(python, data, work, name, env)


def keras_call_paths(name: str, version: str, images: list[bytes]) -> dict:
    """The registered Keras detector in this process, run the two ways on one batch: its pyfunc's
    predict (Keras' Model.predict) and cvops.detection_schema.model_predict (the model called),
    which the server uses; median ms of CALLS calls per batch size, side by side."""
    from PIL import Image

    from cvops.detection_schema import InputFormat, model_predict
    from cvops.registry import load_registered_version

    pyfunc, files = load_registered_version(name, version)
    try:
        paths = {"pyfunc predict (Model.predict)": pyfunc.predict, "model_predict (model called)": model_predict(pyfunc)}
        found = {}
        for batch in BATCHES:
            decoded = [np.asarray(Image.open(io.BytesIO(image)).convert("RGB")) for image in images[:batch]]
            model_input = InputFormat.of(pyfunc).model_input(decoded)
            for path, run in paths.items():
                run(model_input)  # warm-up
                found[f"{path}, batch {batch}"] = median([timed(lambda: run(model_input)) for _ in range(CALLS)])
        return found
    finally:
        files.cleanup()


def timed(call) -> float:
    started = time.perf_counter()
    call()
    return (time.perf_counter() - started) * 1000


def bench_framework(framework: str, python: Path, endpoint, data: Path, images: list[bytes], work: Path,
                    seconds: float) -> dict:
    """One framework's cells (batch -> figures) and switch, served from ``name@champion``."""
    client = MlflowClient(endpoint.url)
    name = f"bench-serving-{framework}-{uuid.uuid4().hex[:6]}"
    started = time.monotonic()
    register_detector(framework, python, data, work, name)
    champion = str(max(int(v.version) for v in client.search_model_versions(f"name = '{name}'")))
    client.set_registered_model_alias(name, "champion", champion)
    print(f"{framework}: registered in {time.monotonic() - started:.0f} s", flush=True)
    server = ServingServer(work, endpoint.url, *endpoint.auth, models=f"{name}@champion", python=python,
                           CVOPS_SERVE_POLL_INTERVAL_S="1")
    try:
        server.start()
        server.wait_ready(600)
        cells = {batch: measure(prediction_request(server.url, name, endpoint.auth, images[:batch]), seconds) for batch in BATCHES}
        new = register_again(client, name, champion)
        switched = switch_under_load(prediction_request(server.url, name, endpoint.auth, images[:1]),
                                     lambda: client.set_registered_model_alias(name, "champion", new),
                                     lambda answers: any(version == new for *_, version in answers))
    finally:
        server.stop()
    result = {"cells": cells, "switch": switched}
    if framework == "keras":
        result["in_process_ms"] = keras_call_paths(name, champion, images)
    return result


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], lambda parser: parser.add_argument(
        "--frameworks", default=",".join(FRAMEWORKS), help="comma-separated, of " + ", ".join(FRAMEWORKS)))
    frameworks = [name for name in args.frameworks.split(",") if name]
    unknown = set(frameworks) - set(FRAMEWORKS)
    if unknown or not frameworks:
        raise SystemExit(f"--frameworks {args.frameworks!r}: choose from {', '.join(FRAMEWORKS)}")
    seconds = 30.0 if args.full else 10.0
    # Keras serves from this environment; the others from their own.
    pythons = {"keras": Path(sys.executable)}
    for name in set(frameworks) - {"keras"}:
        try:
            pythons[name] = environments.ensure(name)
        except environments.Unavailable as reason:
            raise SystemExit(f"no {name} environment: {reason}; or measure the others (--frameworks)") from None
    with Stack(start_servers=False) as stack:
        stack.start_ours()
        endpoint = stack.ours
        # Outside the stack's folder: cvops closes its spool at exit, after the stack removed it.
        os.environ["CVOPS_SPOOL_DIR"] = tempfile.mkdtemp(prefix="cvops-bench-spool-")
        data = stack.root / "shapes"
        make_shapes(pythons.get("tfod", pythons[frameworks[0]]), data, stack.root / "make_shapes.log",
                    tfrecord="tfod" in frameworks)
        images = [path.read_bytes() for path in sorted((data / "images" / "val").glob("*.png"))]
        results = {"clients": CLIENTS, "seconds": seconds, "frameworks": {}}
        with endpoint.as_client():
            for framework in frameworks:
                (stack.root / framework).mkdir()
                results["frameworks"][framework] = bench_framework(framework, pythons[framework], endpoint, data, images,
                                                                   stack.root / framework, seconds)
        measured = results["frameworks"].items()
        speed = print_table(
            f"Our server per framework, CPU, {CLIENTS} concurrent clients, 64 px PNGs, {seconds:.0f} s per cell",
            ["framework", "batch", "requests/s", "images/s", "p50 ms", "p95 ms", "failed"],
            [[framework, batch, f"{cell['rps']:.1f}", f"{cell['rps'] * batch:.1f}", f"{cell['p50_ms']:.0f}",
              f"{cell['p95_ms']:.0f}", cell["failed"]]
             for framework, result in measured for batch, cell in result["cells"].items()])
        switch = print_table(
            "Moving @champion to a new version of the model under load (batch 1, poll every 1 s)",
            ["framework", "requests during the switch", "failed", "until the new version answered"],
            [[framework, result["switch"]["requests"], result["switch"]["failed"], f"{result['switch']['switch_s']:.1f} s"]
             for framework, result in measured])
        tables = [speed, switch]
        if "keras" in results["frameworks"]:
            calls = results["frameworks"]["keras"]["in_process_ms"]
            tables.append(print_table(f"The Keras detector in-process, one call, median of {CALLS}",
                                      ["how", "ms"], [[how, f"{ms:.1f}"] for how, ms in calls.items()]))
        save("serving_frameworks", args.full, tables, results)


if __name__ == "__main__":
    main()
