"""What a team member's machine does against the compose endpoint, run as a separate process whose
environment holds only MLFLOW_TRACKING_URI / MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD
(no S3 keys, no S3 endpoint: every byte must go through the MLflow server).

    tracking_client.py log ARTIFACT_FILE      log a run with params, metrics and the artifact; print its id
    tracking_client.py snapshot WORK_DIR      print every run (params, metrics, tags, artifact digests)
"""

import hashlib
import json
import sys
import time
from pathlib import Path

from mlflow import MlflowClient


def log_run(artifact: Path) -> dict:
    client = MlflowClient()
    experiment_id = client.create_experiment(f"compose-check-{time.time_ns()}")
    run = client.create_run(experiment_id, run_name="compose-check", tags={"framework": "detectron2"})
    run_id = run.info.run_id
    client.log_param(run_id, "SOLVER.BASE_LR", "0.01")
    for step in range(5):
        client.log_metric(run_id, "total_loss", 1.0 / (step + 1), step=step)
    client.log_artifact(run_id, str(artifact), artifact_path="checkpoints")
    client.set_terminated(run_id)
    return {"run_id": run_id, "experiment_id": experiment_id}


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def snapshot(work_dir: Path) -> dict:
    """Everything a user would compare after a restore, keyed by run id."""
    client = MlflowClient()
    runs = {}
    for experiment in client.search_experiments():
        for run in client.search_runs([experiment.experiment_id]):
            run_id = run.info.run_id
            local = Path(client.download_artifacts(run_id, "", str(work_dir / run_id)))
            runs[run_id] = {
                "experiment": experiment.name,
                "status": run.info.status,
                "params": run.data.params,
                "tags": {k: v for k, v in run.data.tags.items() if not k.startswith("mlflow.log-model")},
                "metrics": {key: [(m.step, m.value) for m in client.get_metric_history(run_id, key)]
                            for key in run.data.metrics},
                "artifacts": {p.relative_to(local).as_posix(): _digest(p)
                              for p in sorted(local.rglob("*")) if p.is_file()},
            }
    return runs


if __name__ == "__main__":
    command, path = sys.argv[1], Path(sys.argv[2])
    result = log_run(path) if command == "log" else snapshot(path)
    print(json.dumps(result, sort_keys=True))
