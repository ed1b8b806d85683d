"""Hyperparameter sweeps (``cvops sweep``): an Optuna study on the stack's PostgreSQL, every
trial a child run of the sweep's parent run. Optuna is imported only when a sweep runs or a
trial reports, never by ``import cvops``.

Inside a trial::

    import cvops, cvops.sweeps
    params = cvops.sweeps.trial_params({"lr": 1e-3})
    with cvops.start_run() as run:
        for epoch in range(epochs):
            ...
            run.log_metric("val_loss", val_loss, step=epoch)
            if cvops.sweeps.report_intermediate(run, {"val_loss": val_loss}, epoch):
                break  # pruned: the run has ended KILLED

The framework integrations report by themselves (docs/sweeps.md, "The trial's side").
"""
from cvops.sweeps.trial import TrialPruned, in_trial, report_intermediate, trial_params

__all__ = ["TrialPruned", "in_trial", "report_intermediate", "trial_params"]
