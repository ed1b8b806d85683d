"""Job spec validation: what a user writes in job.yaml and the errors they get back."""
from __future__ import annotations

import textwrap

import pytest

from cvops.jobs.spec import JobSpecError, check_host_paths, load_job_spec, parse_job_spec

MINIMAL = {"framework": "keras", "image": "cvops/trainer-keras:2.21.0", "command": ["python3", "train.py"], "experiment": "shapes"}


def write(tmp_path, text: str):
    path = tmp_path / "job.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def problems(data) -> dict[str, str]:
    with pytest.raises(JobSpecError) as caught:
        parse_job_spec(data)
    return dict(caught.value.problems)


def test_full_spec_loads_with_paths_resolved_against_the_file(tmp_path):
    (tmp_path / "code").mkdir()
    (tmp_path / "data").mkdir()
    spec = load_job_spec(
        write(
            tmp_path,
            """
            name: shapes-keras
            framework: keras
            image: cvops/trainer-keras:2.21.0
            code: code
            command: python3 train.py --epochs 5
            datasets:
              - {source: data, target: /data/shapes}
              - {pvc: coco-2017, sub_path: val, target: /data/coco}
            experiment: shapes
            run_name: first
            tags: {team: vision, epochs: 5}
            gpus: "0,1"
            shm_size: 2g
            resources: {cpus: 1.5, memory: 512Mi}
            env: {DEBUG: true, SEED: 7}
            """,
        )
    )
    assert spec.command == ["python3", "train.py", "--epochs", "5"]
    assert spec.code == tmp_path / "code"
    assert spec.datasets[0].source == tmp_path / "data"
    assert spec.datasets[1].pvc == "coco-2017"
    assert spec.gpus == [0, 1]
    assert spec.shm_size == 2 * 1024**3
    assert spec.resources.memory == 512 * 1024**2
    assert spec.env == {"DEBUG": "true", "SEED": "7"}
    assert spec.tags == {"team": "vision", "epochs": "5"}
    assert spec.job_dir == tmp_path / "code"
    check_host_paths(spec)


@pytest.mark.parametrize("gpus, expected", [("all", "all"), (0, 0), (2, 2), ([1], [1]), ("3", 3)])
def test_gpu_requests(gpus, expected):
    assert parse_job_spec({**MINIMAL, "gpus": gpus}).gpus == expected


def test_every_problem_is_reported_at_once_with_its_field_path():
    found = problems(
        {
            "framework": "pytorch",
            "image": "",
            "command": [],
            "experiment": "e",
            "gpus": -1,
            "datasets": [{"source": "/x", "target": "/data"}, {"source": "/y", "target": "relative"}],
            "shm_size": "lots",
            "resources": {"cpus": 0},
            "colour": "red",
        }
    )
    assert set(found) == {
        "framework", "image", "command", "gpus", "datasets[1].target", "shm_size", "resources.cpus", "colour"
    }
    assert "'keras', 'detectron2' or 'tfod'" in found["framework"]
    assert "absolute path inside the container" in found["datasets[1].target"]
    assert "use all, a count" in found["gpus"]
    assert "k/m/g/t suffix" in found["shm_size"]
    assert "unknown field" in found["colour"]


def test_missing_required_fields_are_named():
    found = problems({"framework": "keras"})
    assert found == {
        "image": "required field is missing",
        "command": "required field is missing",
        "experiment": "required field is missing",
    }


@pytest.mark.parametrize(
    "field, value, where, message",
    [
        ("env", {"MLFLOW_TRACKING_PASSWORD": "x"}, "env", "set by `cvops submit`"),
        ("env", {"1BAD": "x"}, "env", "not a valid environment variable name"),
        ("tags", {"Team": "x"}, "tags", "lowercase letters"),
        ("tags", {"git_commit": "abc"}, "tags", "recorded by `cvops submit`"),
        ("gpus", [0, 0], "gpus", "repeat an id"),
        ("gpus", [], "gpus", "not a GPU request"),
        ("gpus", True, "gpus", "not a GPU request"),
        ("name", "My_Job", "name", "lowercase letters, digits or '-'"),
        ("datasets", [{"target": "/data"}], "datasets[0]", "exactly one of source"),
        ("datasets", [{"source": "/a", "target": "/d"}, {"source": "/b", "target": "/d"}], "datasets", "more than one thing is mounted at /d"),
        ("datasets", [{"source": "/a", "target": "/job"}], "datasets", "where the job's code is mounted"),
        ("datasets", [{"source": "/a", "sub_path": "x", "target": "/d"}], "datasets[0]", "sub_path only applies"),
        ("resources", {"memory": "-1g"}, "resources.memory", "not a size"),
        ("kubernetes", {"namespce": "x"}, "kubernetes.namespce", "unknown field"),
    ],
)
def test_bad_field_is_named(field, value, where, message):
    found = problems({**MINIMAL, field: value})
    assert where in found, found
    assert message in found[where]


def test_host_paths_are_checked_only_for_running_here(tmp_path):
    path = write(tmp_path, "framework: tfod\nimage: i\ncommand: [x]\nexperiment: e\ncode: missing\n"
                 "datasets: [{source: nodata, target: /data}]\n")
    spec = load_job_spec(path)  # loading (and a Kubernetes rendering) does not need them here
    with pytest.raises(JobSpecError) as caught:
        check_host_paths(spec)
    assert dict(caught.value.problems).keys() == {"code", "datasets[0].source"}


def test_yaml_errors_give_the_line(tmp_path):
    with pytest.raises(JobSpecError) as caught:
        load_job_spec(write(tmp_path, "framework: keras\nimage: [unclosed\n"))
    assert "line 3" in str(caught.value) or "line 2" in str(caught.value)
    assert "not valid YAML" in str(caught.value)


def test_top_level_must_be_a_mapping(tmp_path):
    with pytest.raises(JobSpecError, match="must be a mapping"):
        load_job_spec(write(tmp_path, "- just\n- a list\n"))


def test_unreadable_file_is_reported(tmp_path):
    with pytest.raises(JobSpecError, match="cannot read the file"):
        load_job_spec(tmp_path / "nope.yaml")


def test_shipped_examples_are_valid():
    from pathlib import Path

    examples = Path(__file__).resolve().parents[2] / "trainer" / "examples"
    specs = sorted(examples.glob("*/job.yaml"))
    assert {p.parent.name for p in specs} >= {"keras"}
    for path in specs:
        spec = load_job_spec(path)
        assert spec.framework == path.parent.name
