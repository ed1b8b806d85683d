"""One trial of bench/sweep.py: a tracked run that logs a short val_loss curve and prints its value.

No training: what is left is the trial's fixed cost (interpreter, cvops/MLflow import, run start,
the final flush), the part `cvops sweep` adds to or shares with a hand-written Optuna loop."""
import cvops
import cvops.sweeps

x = cvops.sweeps.trial_params({"x": 0.0})["x"]
with cvops.start_run() as run:
    for step in range(3):
        val_loss = (x - 2) ** 2 + 1 / (step + 1)
        run.log_metric("val_loss", val_loss, step=step)
print(f"value={val_loss}")
