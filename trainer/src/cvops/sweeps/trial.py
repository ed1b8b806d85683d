"""Inside a trial: its parameters, and reporting the intermediate objective for pruning.

``cvops sweep`` starts each trial's command with this environment (the contract with
:mod:`cvops.sweeps.runner`):

- ``CVOPS_TRIAL_PARAMS``: the trial's parameters as one JSON object (typed: floats stay floats)
- ``CVOPS_TRIAL_NUMBER``, ``CVOPS_SWEEP_STUDY``, ``CVOPS_SWEEP_STORAGE``: the Optuna trial
- ``CVOPS_SWEEP_OBJECTIVE``: the metric the sweep optimises; ``CVOPS_SWEEP_PRUNER``: its pruner

A pruned trial ends its run KILLED with tags ``pruned=true`` and ``pruned_at_step``; the sweep
then tells the study PRUNED. Reporting never stops training because of a tracking or database
problem: it warns and carries on unpruned. The objective is found in reported metrics by the
name the run logs it under (:func:`cvops.sanitize_metric_name`), so ``DetectionBoxes_Precision/mAP@.50IOU``
and its logged form ``DetectionBoxes_Precision/mAP_at_.50IOU`` both match.
"""
from __future__ import annotations

import json
import logging
import os
import threading
from typing import Any, Mapping

from cvops.tracking.names import sanitize_metric_name

log = logging.getLogger("cvops")

PARAMS_ENV = "CVOPS_TRIAL_PARAMS"
NUMBER_ENV = "CVOPS_TRIAL_NUMBER"
STUDY_ENV = "CVOPS_SWEEP_STUDY"
OBJECTIVE_ENV = "CVOPS_SWEEP_OBJECTIVE"
PRUNER_ENV = "CVOPS_SWEEP_PRUNER"
PRUNED_TAG = "pruned"
PRUNED_AT_STEP_TAG = "pruned_at_step"


def trial_params(defaults: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """This trial's parameters over ``defaults`` (so a script also runs outside a sweep)."""
    params = dict(defaults or {})
    raw = os.environ.get(PARAMS_ENV)
    if raw:
        params.update(json.loads(raw))
    return params


def in_trial() -> bool:
    return bool(os.environ.get(NUMBER_ENV))


class TrialPruned(SystemExit):
    """Raised by an adapter whose training loop can only be left by an exception (Detectron2's
    ``TrainerBase.train``). A ``SystemExit`` with status 0: the loop's and the script's
    ``except Exception`` let it through, so nothing logs it as a training error, ``finally``
    blocks and ``after_train`` hooks still run, and the process ends quietly unless the script
    catches it. The trial's run has already ended KILLED."""

    def __init__(self, step: int) -> None:
        super().__init__(0)
        self.step = step

    def __str__(self) -> str:
        return f"the sweep pruned this trial at step {self.step}"


class _TrialReporter:
    """The running Optuna trial, loaded from the study's storage with the sweep's pruner."""

    def __init__(self, environ: Mapping[str, str]):
        import optuna

        from cvops.sweeps.spec import STORAGE_ENV, PrunerSpec

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.objective = environ[OBJECTIVE_ENV]
        pruner = PrunerSpec.model_validate_json(environ.get(PRUNER_ENV) or "{}").build()
        study = optuna.load_study(study_name=environ[STUDY_ENV], storage=environ[STORAGE_ENV], pruner=pruner)
        storage = study._storage  # the study's own storage object: one connection pool for both
        study_id = storage.get_study_id_from_name(environ[STUDY_ENV])
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, int(environ[NUMBER_ENV]))
        self.trial = optuna.trial.Trial(study, trial_id)

    def report(self, run: Any, value: float, step: int) -> bool:
        self.trial.report(float(value), int(step))
        if not self.trial.should_prune():
            return False
        run.set_tags({PRUNED_TAG: "true", PRUNED_AT_STEP_TAG: str(step)})
        run.end("KILLED")
        log.warning("cvops: trial %s pruned at step %s (%s=%s)", self.trial.number, step, self.objective, value)
        return True


_reporter: _TrialReporter | None = None
_reporter_lock = threading.Lock()


def objective_value(metrics: Mapping[str, Any]) -> Any:
    """The sweep's objective in ``metrics`` (matched by logged name); None outside a trial."""
    if not in_trial():
        return None
    wanted = sanitize_metric_name(os.environ.get(OBJECTIVE_ENV, ""))
    return next((value for name, value in metrics.items() if sanitize_metric_name(name) == wanted), None)


def report_intermediate(run: Any, metrics: Mapping[str, Any], step: int) -> bool:
    """Report the sweep's objective if ``metrics`` holds it; True when the trial is pruned
    (its run has then ended KILLED and training should stop). False outside a sweep."""
    global _reporter
    value = objective_value(metrics)
    if value is None:
        return False
    objective = os.environ[OBJECTIVE_ENV]
    try:
        with _reporter_lock:
            if _reporter is None:
                _reporter = _TrialReporter(os.environ)
        return _reporter.report(run, value, step)
    except Exception as error:  # the study's database is not the training's business
        log.warning("cvops: could not report %s to the sweep's study (%s); this trial will not be pruned",
                    objective, error)
        return False
