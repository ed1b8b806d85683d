"""`cvops` command line: every sub-command is reachable, and starting it stays light."""
import re
import subprocess
import sys

from cvops.cli import build_parser

COMMANDS = {"sync", "submit", "ps", "logs", "stop", "train", "sweep", "doctor", "tfod", "evaluate", "promote"}


def _python(code_or_args: list[str]) -> str:
    result = subprocess.run([sys.executable, *code_or_args], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_help_lists_every_command():
    listed = {match.group(1) for match in re.finditer(r"^ {4}(\w+) ", _python(["-m", "cvops", "--help"]), re.M)}
    assert COMMANDS <= listed


def test_the_tfod_command_takes_model_main_s_flags_and_passes_the_rest_through():
    args = build_parser().parse_args(["tfod", "--model_dir=out", "--pipeline_config_path=p.config",
                                      "--", "--num_train_steps=25"])
    assert str(args.model_dir) == "out" and args.model_main_args[-1] == "--num_train_steps=25"


def test_the_sweep_command_takes_a_spec_or_status_and_a_spec(capsys):
    from cvops.cli import main

    assert main(["sweep", "status"]) == 2
    assert main(["sweep", "one.yaml", "two.yaml"]) == 2
    assert "usage: cvops sweep" in capsys.readouterr().err
    assert main(["sweep", "status", "missing.yaml"]) == 2
    assert "missing.yaml: 1 problem(s) in the sweep spec" in capsys.readouterr().err


def test_promotion_gates_are_written_metric_then_options():
    from cvops.cli.models import parse_gate
    from cvops.registry import Gate

    assert parse_gate("eval/mAP,min=30,improvement=-0.5") == Gate("eval/mAP", min_value=30.0, min_improvement=-0.5)
    assert parse_gate("inference/latency_p95_ms,lower,max=50") == Gate(
        "inference/latency_p95_ms", higher_is_better=False, max_value=50.0)


def test_a_bad_gate_or_dataset_is_refused_naming_what_is_wrong(capsys, tmp_path):
    from cvops.cli import main

    assert main(["promote", "shapes", "2", "--gate", "eval/mAP,minimum=30"]) == 2
    assert "unknown option 'minimum=30' (lower, min=V, max=V, improvement=V)" in capsys.readouterr().err
    assert main(["promote", "shapes", "2", "--gate", "eval/mAP,min=high"]) == 2
    assert "min='high' is not a number" in capsys.readouterr().err
    assert main(["evaluate", "models:/shapes/2", "--dataset", str(tmp_path)]) == 2
    assert f"{tmp_path}: no annotations/val.json" in capsys.readouterr().err


def test_building_the_parser_imports_no_framework():
    code = ("import sys, cvops, cvops.sweeps; from cvops.cli import build_parser; build_parser(); "
            "print(sorted(m for m in ('tensorflow', 'torch', 'detectron2', 'keras', 'optuna') if m in sys.modules))")
    assert _python(["-c", code]).strip() == "[]"


def test_the_docker_only_job_commands_do_not_load_mlflow():
    """`cvops ps`, `logs` and `stop` only talk to Docker: MLflow's import would add a second to each."""
    code = "import sys, cvops.jobs.docker_backend; print('mlflow' in sys.modules)"
    assert _python(["-c", code]).strip() == "False"


def test_a_missing_command_module_is_an_error_not_a_missing_command(monkeypatch):
    import cvops.cli
    import pytest

    monkeypatch.setattr(cvops.cli, "_COMMAND_MODULES", (*cvops.cli._COMMAND_MODULES, "no_such_command"))
    with pytest.raises(ModuleNotFoundError, match="no_such_command"):
        build_parser()
