"""A trial of tests/integration/test_sweep.py: a deterministic val_loss curve, no framework.

base(lr) is smallest at lr = 0.01; behaviour `bad` makes a curve the median pruner must prune
once two trials have completed; `crash` kills the process mid-run (a worker dying); `hang`
says `hanging`, writes its process id to hang.pid (where the folder is writable: a container's
code mount is not) and waits to be killed (its whole sweep process dying, or its container). With
OBJECTIVE_LOGS_MODEL=1 a finished trial logs a small pyfunc model, unregistered, as a trial of a
sweep that registers its best model does."""
import math
import os
import signal
import time

import cvops
import cvops.sweeps

params = cvops.sweeps.trial_params({"lr": 0.01, "behaviour": "good"})
base = 100.0 if params["behaviour"] == "bad" else abs(math.log10(params["lr"]) + 2) + 1
with cvops.start_run() as run:
    if params["behaviour"] == "hang":
        if os.access(".", os.W_OK):
            with open("hang.pid", "w") as pid_file:
                pid_file.write(str(os.getpid()))
        print("hanging", flush=True)
        time.sleep(600)
    for epoch in range(6):
        if params["behaviour"] == "crash" and epoch == 2:
            run.flush(10)
            os.kill(os.getpid(), signal.SIGKILL)
        val_loss = base / (epoch + 1)
        run.log_metric("val_loss", val_loss, step=epoch)
        if cvops.sweeps.report_intermediate(run, {"val_loss": val_loss}, epoch):
            break
        time.sleep(0.3)
    else:
        if os.environ.get("OBJECTIVE_LOGS_MODEL") == "1":
            import mlflow.pyfunc

            from cvops import registry

            class LastLoss(mlflow.pyfunc.PythonModel):
                def predict(self, context, model_input):
                    return [val_loss] * len(model_input)

            registry.log_model(run, LastLoss(), "pyfunc", pip_requirements=[])
print("trial done", params)
