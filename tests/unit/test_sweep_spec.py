"""Sweep spec validation: what a user writes in sweep.yaml and the errors they get back."""
from __future__ import annotations

import textwrap

import pytest

from cvops.sweeps.spec import STORAGE_ENV, SweepSpecError, load_sweep_spec, parse_sweep_spec

JOB = {"framework": "keras", "image": "cvops/trainer-keras:2.21.0", "command": ["python3", "train.py"], "experiment": "shapes"}
MINIMAL = {
    "job": JOB,
    "study": "shapes-lr",
    "search_space": {"lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True}},
    "objective": {"metric": "val_loss", "direction": "min"},
    "trials": 6,
}


# momentum exists only in trials that use SGD.
CONDITIONAL = {
    "lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
    "optimizer": {"type": "categorical", "choices": ["sgd", "adamw"]},
    "momentum": {"type": "float", "low": 0.5, "high": 0.99, "when": {"optimizer": "sgd"}},
}


def problems(**changes) -> dict[str, str]:
    data = {**MINIMAL, **changes}
    with pytest.raises(SweepSpecError) as caught:
        parse_sweep_spec({key: value for key, value in data.items() if value is not None})
    assert "problem(s) in the sweep spec" in str(caught.value)
    return dict(caught.value.problems)


def test_full_spec_loads_with_the_job_file_relative_to_the_sweep_file(tmp_path):
    (tmp_path / "job.yaml").write_text("framework: keras\nimage: img\ncommand: python3 train.py\nexperiment: shapes\n")
    path = tmp_path / "sweep.yaml"
    path.write_text(textwrap.dedent(
        """
        job: job.yaml
        study: shapes-lr
        search_space:
          lr: {type: float, low: 0.0001, high: 0.1, log: true}
          dropout: {type: float, low: 0.0, high: 0.5, step: 0.1}
          filters: {type: int, low: 8, high: 64, step: 8}
          backbone: {type: categorical, choices: [tiny, small]}
        objective: {metric: val_loss, direction: minimize}
        sampler: random
        seed: 3
        pruner: {type: median, startup_trials: 2, warmup_steps: 1}
        trials: 20
        parallelism: 2
        gpus_per_trial: 1
        enqueue:
          - {lr: 0.01, backbone: tiny}
        storage: postgresql+psycopg2://cvops@db/optuna
        """
    ))
    spec = load_sweep_spec(path)
    from cvops.sweeps.spec import template_job

    assert template_job(spec).command == ["python3", "train.py"]
    assert template_job(spec).source_file == tmp_path / "job.yaml"
    distributions = {name: param.distribution() for name, param in spec.search_space.items()}
    assert distributions["lr"].log and distributions["filters"].step == 8
    assert distributions["backbone"].choices == ("tiny", "small")
    assert spec.pruner.build().__class__.__name__ == "MedianPruner"
    assert spec.storage_url({}) == "postgresql+psycopg2://cvops@db/optuna"
    assert spec.storage_url({STORAGE_ENV: "postgresql+psycopg2://other/optuna"}) == "postgresql+psycopg2://other/optuna"


def test_defaults_and_short_forms():
    spec = parse_sweep_spec({**MINIMAL, "pruner": "hyperband"})
    assert spec.objective.direction == "minimize"
    assert (spec.sampler, spec.parallelism, spec.gpus_per_trial, spec.trials_in) == ("tpe", 1, 0, "local")
    assert spec.pruner.type == "hyperband"
    assert parse_sweep_spec(MINIMAL).pruner.type == "none"
    assert parse_sweep_spec(MINIMAL).registration is None
    registration = parse_sweep_spec({**MINIMAL, "register": {"name": "shapes", "alias": "challenger"}}).registration
    assert (registration.name, registration.alias, registration.model) == ("shapes", "challenger", "model")


@pytest.mark.parametrize(
    ("changes", "field", "message"),
    [
        ({"study": None}, "study", "required field is missing"),
        ({"study": "my study"}, "study", "letters, digits"),
        ({"trials": 0}, "trials", "greater than or equal to 1"),
        ({"parallelism": 0}, "parallelism", "greater than or equal to 1"),
        ({"sampler": "grid"}, "sampler", "'tpe' or 'random'"),
        ({"pruner": "asha"}, "pruner.type", "'none', 'median' or 'hyperband'"),
        ({"objective": {"metric": "val_loss", "direction": "up"}}, "objective.direction", "'maximize' or 'minimize'"),
        ({"objective": {"metric": "", "direction": "max"}}, "objective.metric", "at least 1 character"),
        ({"search_space": {}}, "search_space", "at least 1 item"),
        ({"search_space": {"lr": {"low": 1, "high": 2}}}, "search_space.lr", "type: float, int or categorical"),
        ({"search_space": {"lr": {"type": "float", "low": 2, "high": 1}}}, "search_space.lr", "must be below high"),
        ({"search_space": {"lr": {"type": "float", "low": 0, "high": 1, "log": True}}}, "search_space.lr", "low > 0"),
        ({"search_space": {"n": {"type": "int", "low": 1.5, "high": 4}}}, "search_space.n.low", "valid integer"),
        ({"search_space": {"b": {"type": "categorical", "choices": []}}}, "search_space.b.choices", "at least 1"),
        ({"search_space": {"b": {"type": "categorical", "choices": ["a", "a"]}}}, "search_space.b.choices", "twice"),
        ({"search_space": {"lr": {"type": "float", "low": 1, "high": 2, "spread": 3}}}, "search_space.lr.spread",
         "unknown field"),
        ({"enqueue": [{"lr": 5.0}]}, "enqueue[0].lr", "5.0 is outside"),
        ({"enqueue": [{"momentum": 0.9}]}, "enqueue[0].momentum", "not a parameter of search_space"),
        ({"job": {**JOB, "gpus": "many"}}, "job.gpus", "not a GPU request"),
        ({"job": {key: value for key, value in JOB.items() if key != "image"}}, "job.image", "required field is missing"),
        ({"workers": 3}, "workers", "unknown field"),
        ({"register": {"alias": "challenger"}}, "register.name", "required field is missing"),
        ({"register": {"name": "shapes", "alias": "champion"}}, "register.alias", "promotion gate"),
        ({"register": {"name": "shapes", "alias": "v2"}}, "register.alias", "not v<number> or latest"),
        ({"register": {"name": "shapes", "alias": "my alias"}}, "register.alias", "letters, digits"),
        ({"register": {"name": "shapes", "stage": "prod"}}, "register.stage", "unknown field"),
        ({"kubernetes": {"storage_secret": ""}}, "kubernetes.storage_secret", "at least 1 character"),
        ({"trials_in": "kubernetes"}, "trials_in", "'local' or 'docker'"),
        ({"search_space": {**CONDITIONAL, "momentum": {**CONDITIONAL["momentum"], "when": {"optimizer": "adam"}}}},
         "search_space.momentum.when.optimizer", "['adam'] not among its choices"),
        ({"search_space": {**CONDITIONAL, "momentum": {**CONDITIONAL["momentum"], "when": {"lr": 0.1}}}},
         "search_space.momentum.when.lr", "categorical parameter"),
        ({"search_space": {**CONDITIONAL, "momentum": {**CONDITIONAL["momentum"], "when": {"beta": "x"}}}},
         "search_space.momentum.when.beta", "not another parameter"),
        ({"search_space": CONDITIONAL, "enqueue": [{"optimizer": "adamw", "momentum": 0.9}]},
         "enqueue[0].momentum", "sampled only when"),
    ],
)
def test_every_problem_names_its_field(changes, field, message):
    found = problems(**changes)
    assert field in found, found
    assert message in found[field], found


def test_several_problems_are_reported_at_once():
    found = problems(trials=0, sampler="grid", objective={"metric": "m"})
    assert {"trials", "sampler", "objective.direction"} <= set(found)


def test_a_missing_job_file_names_the_job_field(tmp_path):
    path = tmp_path / "sweep.yaml"
    path.write_text("job: nowhere.yaml\nstudy: s\nsearch_space: {x: {type: int, low: 0, high: 3}}\n"
                    "objective: {metric: m, direction: max}\ntrials: 2\n")
    with pytest.raises(SweepSpecError) as caught:
        load_sweep_spec(path)
    (where, message), = caught.value.problems
    assert where.startswith("job (") and "cannot read the file" in message


def test_storage_is_required_from_the_spec_or_the_environment():
    with pytest.raises(SweepSpecError) as caught:
        parse_sweep_spec(MINIMAL).storage_url({})
    assert caught.value.problems[0][0] == "storage" and STORAGE_ENV in caught.value.problems[0][1]


def test_trial_params_reach_the_script_typed(monkeypatch):
    from cvops.sweeps import in_trial, report_intermediate, trial_params

    monkeypatch.delenv("CVOPS_TRIAL_PARAMS", raising=False)
    monkeypatch.delenv("CVOPS_TRIAL_NUMBER", raising=False)
    assert trial_params({"lr": 0.1}) == {"lr": 0.1}
    assert not in_trial() and report_intermediate(None, {"val_loss": 1.0}, 0) is False
    monkeypatch.setenv("CVOPS_TRIAL_PARAMS", '{"lr": 0.01, "filters": 16, "backbone": "tiny"}')
    assert trial_params({"lr": 0.1, "epochs": 3}) == {"lr": 0.01, "filters": 16, "backbone": "tiny", "epochs": 3}


def test_the_objective_is_found_under_its_written_or_its_logged_name(monkeypatch):
    """The OD API writes ``mAP@.50IOU``; the run (and the sweep reading it back) has it as
    ``mAP_at_.50IOU``: a sweep objective spelled either way is found in the evaluator's metrics."""
    from cvops.sweeps.trial import objective_value

    evaluated = {"eval/DetectionBoxes_Precision/mAP@.50IOU": 0.4, "eval/Loss/total_loss": 2.0}
    monkeypatch.setenv("CVOPS_SWEEP_OBJECTIVE", "eval/DetectionBoxes_Precision/mAP@.50IOU")
    monkeypatch.delenv("CVOPS_TRIAL_NUMBER", raising=False)
    assert objective_value(evaluated) is None  # not a trial
    monkeypatch.setenv("CVOPS_TRIAL_NUMBER", "3")
    assert objective_value(evaluated) == 0.4
    monkeypatch.setenv("CVOPS_SWEEP_OBJECTIVE", "eval/DetectionBoxes_Precision/mAP_at_.50IOU")
    assert objective_value(evaluated) == 0.4
    assert objective_value({"eval/Loss/total_loss": 2.0}) is None


@pytest.mark.parametrize(
    ("url", "network", "refused_because"),
    [
        ("sqlite:///optuna.db", "host", "not a SQLite file"),
        ("postgresql+psycopg2://optuna:s3cret@127.0.0.1:5432/optuna", None, "network bridge cannot reach"),
        ("postgresql+psycopg2://optuna:s3cret@localhost:5432/optuna", "cvops_default", "network cvops_default"),
        ("postgresql+psycopg2://optuna:s3cret@127.0.0.1:5432/optuna", "host", None),
        ("postgresql+psycopg2://optuna:s3cret@db.example.com:5432/optuna", None, None),
    ],
)
def test_trials_in_containers_need_a_storage_their_network_reaches(url, network, refused_because):
    from cvops.sweeps.containers import check_storage_reachable
    from cvops.sweeps.runner import SweepError

    if refused_because is None:
        check_storage_reachable(url, network)
        return
    with pytest.raises(SweepError) as caught:
        check_storage_reachable(url, network)
    assert refused_because in str(caught.value) and "s3cret" not in str(caught.value)


def test_a_conditional_parameter_is_sampled_only_in_trials_that_meet_its_condition():
    import optuna

    spec = parse_sweep_spec({**MINIMAL, "search_space": CONDITIONAL, "sampler": "random",
                             "enqueue": [{"optimizer": "sgd", "momentum": 0.9}, {"optimizer": "adamw"}]})
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for params in spec.enqueue:
        study.enqueue_trial(params)
    trials = [spec.ask(study) for _ in range(12)]
    assert trials[0].params["momentum"] == 0.9 and "momentum" not in trials[1].params  # as enqueued
    for trial in trials:
        assert ("momentum" in trial.params) == (trial.params["optimizer"] == "sgd"), trial.params
        assert 1e-4 <= trial.params["lr"] <= 1e-1
    assert {trial.params["optimizer"] for trial in trials} == {"sgd", "adamw"}
