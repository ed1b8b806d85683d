"""`cvops` command line: every sub-command is reachable, and building the parser stays light."""
import subprocess
import sys

from cvops.cli import build_parser

COMMANDS = {"sync", "submit", "ps", "logs", "stop", "train", "doctor", "tfod"}


def test_every_command_is_registered():
    subparsers = next(action for action in build_parser()._actions if action.dest == "command")
    assert COMMANDS <= set(subparsers.choices)


def test_the_tfod_command_takes_model_main_s_flags_and_passes_the_rest_through():
    args = build_parser().parse_args(["tfod", "--model_dir=out", "--pipeline_config_path=p.config",
                                      "--", "--num_train_steps=25"])
    assert str(args.model_dir) == "out" and args.model_main_args[-1] == "--num_train_steps=25"


def test_help_imports_no_framework():
    code = ("import sys; from cvops.cli import build_parser; build_parser(); "
            "print(sorted(m for m in ('tensorflow', 'torch', 'detectron2', 'keras') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_the_docker_only_job_commands_do_not_load_mlflow():
    """`cvops ps`, `logs` and `stop` only talk to Docker: MLflow's import would add a second to each."""
    code = "import sys, cvops.jobs.docker_backend; print('mlflow' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
