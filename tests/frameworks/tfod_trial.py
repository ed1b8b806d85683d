"""A trial of test_tfod.py's sweep, as a user would script one: the test's pipeline.config with
the trial's ``classification_weight`` (from ``cvops.sweeps.trial_params()``), trained by the
real OD API through ``cvops tfod`` in the trial's own folder.

    python tfod_trial.py PIPELINE WORK_DIR -- MODEL_MAIN_FLAGS...
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import cvops.sweeps
from cvops.cli import main as cvops_main

TEMPLATE_LINE = "classification_weight: 1.0"


def main() -> int:
    template, work = Path(sys.argv[1]), Path(sys.argv[2])
    weight = cvops.sweeps.trial_params({"classification_weight": 1.0})["classification_weight"]
    work = work / f"trial-{os.environ.get('CVOPS_TRIAL_NUMBER', 'alone')}"
    work.mkdir(parents=True)
    text = template.read_text()
    if TEMPLATE_LINE not in text:
        raise SystemExit(f"{template}: no '{TEMPLATE_LINE}' to vary")
    pipeline = work / "pipeline.config"
    pipeline.write_text(text.replace(TEMPLATE_LINE, f"classification_weight: {weight}"))
    model_main_flags = sys.argv[sys.argv.index("--") + 1:] if "--" in sys.argv else []
    return cvops_main(["tfod", f"--model_dir={work / 'model'}", f"--pipeline_config_path={pipeline}",
                       "--eval_timeout_s=60", "--", *model_main_flags])


if __name__ == "__main__":
    sys.exit(main())
