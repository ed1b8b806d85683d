"""One trainer of the chaos tier: logs metrics with the cvops SDK for a while, then ends its run.

``python -m tests.chaos.trainer REPORT --seconds S [--artifact FILE]`` writes REPORT.started once
its run is on the server, and REPORT (JSON) at the end: the run id and every point it handed to the
SDK (and the text artifacts it logged), so the test can compare what was sent with what the server
stored.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import cvops

STEP_S = 0.05  # 20 steps a second, two metrics each: a fast training loop's logging rate


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("report", type=Path)
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--artifact", type=Path, help="a file to log with log_artifact after the first step")
    parser.add_argument("--notes-every", type=int, default=0, metavar="STEPS",
                        help="log a small text artifact every STEPS steps (log_text writes it to the spool's disk)")
    args = parser.parse_args()

    sent: list[tuple[int, float, int]] = []
    notes: list[str] = []
    with cvops.start_run(experiment="chaos", run_name=args.report.stem) as run:
        run.flush(60)
        args.report.with_suffix(".started").write_text(run.run_id or "")
        if args.artifact:
            run.log_artifact(args.artifact, artifact_path="checkpoints")
        deadline = time.monotonic() + args.seconds
        step = 0
        while time.monotonic() < deadline:
            timestamp_ms = int(time.time() * 1000)
            loss = 1.0 / (step + 1)
            run.log_metrics({"loss": loss, "lr": 0.01}, step=step, timestamp_ms=timestamp_ms)
            sent.append((step, loss, timestamp_ms))
            if args.notes_every and step % args.notes_every == 0:
                notes.append(f"notes/step-{step}.txt")
                run.log_text(f"loss {loss}", notes[-1])
            step += 1
            time.sleep(STEP_S)
    args.report.write_text(json.dumps({"run_id": run.run_id, "sent": sent, "notes": notes}))


if __name__ == "__main__":
    main()
