"""What `cvops sweep` costs per trial, against the same trials run by hand with Optuna in memory.

    python -m bench.sweep [--quick|--full]

Both sides run the same trial (bench/sweep_trial.py: a tracked run, three points, no training)
as a process, two at a time, against our server: ``cvops sweep`` with its study in PostgreSQL,
a parent run, a pre-created child run per trial and the value read back from the run; "by hand"
with ``optuna.create_study()`` in memory and ``study.optimize(n_jobs=2)`` whose objective starts
the process and parses the value it prints. Reported: trials per minute, and per trial the time
from its run's start to its first metric and from a trial's run end to the next run's start.
The two sides split a trial's cycle differently: the sweep creates the run before starting the
process (so "start to first metric" holds the process start-up and "end to next start" only what
the sweep does between trials: tell, read the run, log the best, ask, create the next run); by
hand the process creates its own run after importing cvops, so its start-up falls in the gap.
Compare their sums, and the trials per minute. 8 trials quick, 32 full.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from bench.report import median, parse_args, print_table, save
from bench.stack import Stack

TRIAL = Path(__file__).with_name("sweep_trial.py")
REPO = Path(__file__).resolve().parents[1]


def _client_env(stack: Stack, spool: Path, experiment: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "CVOPS_"))}
    env.update({k: v for k, v in stack.ours.client_env().items() if v})
    env.update({"CVOPS_SPOOL_DIR": str(spool), "MLFLOW_EXPERIMENT_NAME": experiment,
                "PYTHONPATH": os.pathsep.join([str(REPO / "trainer" / "src"), str(REPO)])})
    return env


def _timings(client, experiment: str, parent_id: str | None = None) -> dict[str, list[float]]:
    """Start-to-first-metric and end-to-next-start of the trial runs of ``experiment``."""
    runs = [run for run in client.search_runs([client.get_experiment_by_name(experiment).experiment_id],
                                              max_results=1000)
            if run.data.tags.get("mlflow.parentRunId") == parent_id or (parent_id is None and "val_loss" in run.data.metrics)]
    first_metric, gaps = [], []
    starts = sorted(run.info.start_time for run in runs)
    for run in runs:
        history = client.get_metric_history(run.info.run_id, "val_loss")
        if history:
            first_metric.append((min(point.timestamp for point in history) - run.info.start_time) / 1000)
        later = [start for start in starts if start >= run.info.end_time]
        if later:
            gaps.append((later[0] - run.info.end_time) / 1000)
    return {"start_to_first_metric_s": first_metric, "end_to_next_start_s": gaps}


def _by_hand(env: dict[str, str], trials: int) -> float:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)

    def objective(trial) -> float:
        params = {"x": trial.suggest_float("x", -10, 10)}
        done = subprocess.run([sys.executable, str(TRIAL)], env={**env, "CVOPS_TRIAL_PARAMS": json.dumps(params)},
                              capture_output=True, text=True, check=True)
        return float(done.stdout.strip().rsplit("value=", 1)[1])

    started = time.perf_counter()
    optuna.create_study().optimize(objective, n_trials=trials, n_jobs=2)
    return time.perf_counter() - started


def _with_cvops_sweep(env: dict[str, str], trials: int, storage: str, workdir: Path, experiment: str) -> tuple[float, str]:
    study = f"bench-{uuid.uuid4().hex[:6]}"
    spec = workdir / "sweep.yaml"
    spec.write_text(json.dumps({
        "job": {"framework": "keras", "image": "unused", "command": [sys.executable, str(TRIAL)],
                "experiment": experiment},
        "study": study, "search_space": {"x": {"type": "float", "low": -10, "high": 10}},
        "objective": {"metric": "val_loss", "direction": "min"}, "trials": trials, "parallelism": 2,
    }))
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "cvops", "sweep", str(spec)], env={**env, "CVOPS_SWEEP_STORAGE": storage},
                   cwd=workdir, check=True, capture_output=True)
    elapsed = time.perf_counter() - started
    import optuna

    return elapsed, optuna.load_study(study_name=study, storage=storage).user_attrs["cvops.parent_run_id"]


def main() -> None:
    args = parse_args(__doc__)
    trials = 32 if args.full else 8
    with Stack(start_servers=False) as stack, tempfile.TemporaryDirectory() as tmp:
        stack.start_ours()
        connection = stack.postgres.connect()
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute("CREATE DATABASE optuna")
        connection.close()
        storage = stack.postgres.url("optuna")
        workdir = Path(tmp)
        hand_env = _client_env(stack, workdir / "spool-hand", "bench-sweep-by-hand")
        sweep_env = _client_env(stack, workdir / "spool-sweep", "bench-sweep-cvops")
        hand_s = _by_hand(hand_env, trials)
        sweep_s, parent_id = _with_cvops_sweep(sweep_env, trials, storage, workdir, "bench-sweep-cvops")
        with stack.ours.as_client():
            from mlflow import MlflowClient

            client = MlflowClient(stack.ours.url)
            hand = _timings(client, "bench-sweep-by-hand")
            sweep = _timings(client, "bench-sweep-cvops", parent_id)
    rows = []
    for label, total, timings in (("Optuna in memory, by hand", hand_s, hand), ("cvops sweep", sweep_s, sweep)):
        rows.append([label, f"{total:.1f}", f"{60 * trials / total:.1f}",
                     f"{median(timings['start_to_first_metric_s']):.2f}", f"{median(timings['end_to_next_start_s']):.2f}"])
    table = print_table(f"{trials} trials, parallelism 2, CPU (trial: a tracked run of 3 points, no training)",
                        ["how", "wall s", "trials/min", "run start → first metric s (median)",
                         "trial end → next start s (median)"], rows)
    save("sweep", args.full, [table], {"trials": trials, "by_hand_s": hand_s, "sweep_s": sweep_s,
                                       "by_hand": hand, "sweep": sweep})


if __name__ == "__main__":
    main()
