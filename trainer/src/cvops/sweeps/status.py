"""`cvops sweep status`: the study's trials as a table, read from the study's storage alone."""
from __future__ import annotations

import os
from collections import Counter
from typing import TextIO

from cvops.cli.table import print_table
from cvops.sweeps.runner import EXPERIMENT_ATTR, PARENT_RUN_ATTR, RUN_ID_ATTR, open_study
from cvops.sweeps.spec import SweepSpec
from cvops.ui_links import run_ui_url


def trial_rows(study, tracking_uri: str | None) -> list[dict[str, str]]:
    experiment_id = study.user_attrs.get(EXPERIMENT_ATTR)
    rows = []
    for trial in study.get_trials(deepcopy=False):
        run_id = trial.user_attrs.get(RUN_ID_ATTR, "")
        link = run_ui_url(tracking_uri, experiment_id, run_id) if run_id and tracking_uri and experiment_id else run_id
        rows.append({
            "TRIAL": str(trial.number),
            "STATE": trial.state.name,
            "VALUE": "" if trial.value is None else f"{trial.value:g}",
            "STEP": "" if trial.last_step is None else str(trial.last_step),
            "RUN": link,
        })
    return rows


def print_status(spec: SweepSpec, out: TextIO) -> int:
    study, _ = open_study(spec, spec.storage_url(os.environ), create=False, load=True)
    tracking_uri = os.environ.get("MLFLOW_TRACKING_URI")
    rows = trial_rows(study, tracking_uri)
    print_table(rows, ("TRIAL", "STATE", "VALUE", "STEP", "RUN"), out)
    counts = Counter(row["STATE"] for row in rows)
    summary = ", ".join(f"{count} {state.lower()}" for state, count in sorted(counts.items()))
    print(f"\n{len(rows)} of {spec.trials} trials: {summary or 'none yet'}", file=out)
    completed = [trial for trial in study.get_trials(deepcopy=False) if trial.state.name == "COMPLETE"]
    if completed:
        best = study.best_trial
        print(f"best: trial {best.number}, {spec.objective.metric} = {best.value:g}, params {best.params}", file=out)
    parent = study.user_attrs.get(PARENT_RUN_ATTR)
    if parent and tracking_uri and study.user_attrs.get(EXPERIMENT_ATTR):
        print(f"sweep run: {run_ui_url(tracking_uri, study.user_attrs[EXPERIMENT_ATTR], parent)}", file=out)
    return 0
