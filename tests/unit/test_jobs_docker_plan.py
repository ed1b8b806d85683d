"""What `cvops submit` hands the Docker engine: environment contract, mounts, labels, limits."""
from __future__ import annotations

import shlex
import subprocess

import pytest

from cvops.config import load_settings
from cvops.jobs.docker_backend import image_provenance, log_lines, resolve_target
from cvops.jobs.gpus import GpuChoice
from cvops.jobs.plan import Placement, Provenance, Tracking, docker_cli_args, docker_run_kwargs, git_provenance, job_env
from cvops.jobs.spec import load_job_spec, parse_job_spec
from cvops.tracking import schema

pytest.importorskip("docker", reason="the docker SDK (cvops[jobs]) builds the GPU device requests")


@pytest.fixture
def spec(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "job.yaml").write_text(
        "name: shapes\nframework: keras\nimage: cvops/trainer-keras:2.21.0\ncode: .\n"
        "command: [python3, train.py, --epochs, '3']\n"
        "datasets: [{source: data, target: /data/shapes}]\nexperiment: shapes\nrun_name: r1\n"
        "tags: {team: vision}\ngpus: 1\nshm_size: 1g\nresources: {cpus: 1.5, memory: 2g}\nenv: {SEED: 3}\n"
    )
    return load_job_spec(tmp_path / "job.yaml")


PROVENANCE = Provenance(git_commit="a" * 40, git_dirty=True, image_digest="sha256:" + "b" * 64,
                        image_id="sha256:" + "c" * 64)
TRACKING = Tracking(uri="http://mlflow:5000", username="alice", password="s3cret", run_id="c" * 32)
PLACEMENT = Placement(network="cvops_default", gpus=GpuChoice(indices=(1,), uuids=("GPU-1234",)))


def test_environment_is_what_the_sdk_reads(spec):
    env = job_env(spec, PROVENANCE, TRACKING)
    settings = load_settings(env)  # the SDK's one reader of os.environ, fed the container's env
    assert settings.tracking_uri == "http://mlflow:5000"
    assert settings.resume_run_id == "c" * 32
    assert settings.experiment_name == "shapes"
    assert settings.run_name == "r1"
    assert settings.image == "cvops/trainer-keras:2.21.0"
    assert settings.image_digest == PROVENANCE.image_digest
    assert settings.image_id == PROVENANCE.image_id
    assert settings.git_commit == "a" * 40
    assert settings.in_container
    assert settings.tags == {"framework": "keras", "team": "vision", "git_dirty": "true"}
    assert env["MLFLOW_TRACKING_USERNAME"] == "alice" and env["MLFLOW_TRACKING_PASSWORD"] == "s3cret"
    assert env["SEED"] == "3"


def test_docker_run_arguments(spec, tmp_path):
    kwargs = docker_run_kwargs(spec, PROVENANCE, TRACKING, PLACEMENT)
    assert kwargs["image"] == "cvops/trainer-keras:2.21.0"
    assert kwargs["command"] == ["python3", "train.py", "--epochs", "3"]
    assert kwargs["name"] == "cvops-shapes-cccccccc"
    assert kwargs["network"] == "cvops_default"
    assert kwargs["working_dir"] == "/job"
    assert kwargs["volumes"] == {
        str(tmp_path / "data"): {"bind": "/data/shapes", "mode": "ro"},
        str(tmp_path): {"bind": "/job", "mode": "ro"},
    }
    assert kwargs["shm_size"] == 1024**3
    assert kwargs["nano_cpus"] == 1_500_000_000
    assert kwargs["mem_limit"] == 2 * 1024**3
    assert kwargs["init"] and kwargs["detach"]
    assert kwargs["labels"] == {
        "cvops.job": "shapes",
        "cvops.framework": "keras",
        "cvops.experiment": "shapes",
        "cvops.gpus": "1",
        "cvops.run_id": "c" * 32,
        "cvops.run_name": "r1",
    }
    [request] = kwargs["device_requests"]
    assert request["DeviceIDs"] == ["GPU-1234"] and request["Capabilities"] == [["gpu"]]


def test_cpu_job_requests_no_gpu(spec):
    cpu = spec.model_copy(update={"gpus": 0})
    kwargs = docker_run_kwargs(cpu, PROVENANCE, TRACKING, Placement(network="n"))
    assert "device_requests" not in kwargs and "cvops.gpus" not in kwargs["labels"]


def test_pvc_datasets_are_refused_on_docker(spec):
    on_cluster = spec.model_copy(update={"datasets": parse_job_spec(
        {"framework": "keras", "image": "i", "command": ["x"], "experiment": "e",
         "datasets": [{"pvc": "coco", "target": "/data"}]}).datasets})
    with pytest.raises(ValueError, match=r"datasets\[0\].pvc is a Kubernetes claim"):
        docker_run_kwargs(on_cluster, PROVENANCE, TRACKING, PLACEMENT)


def test_cli_line_matches_the_sdk_call_and_hides_secrets(spec, tmp_path):
    args = docker_cli_args(
        docker_run_kwargs(spec, PROVENANCE, TRACKING, PLACEMENT),
        secret_names=frozenset({"MLFLOW_TRACKING_PASSWORD"}),
    )
    line = shlex.join(args)
    assert "s3cret" not in line
    assert "--env MLFLOW_TRACKING_PASSWORD " in line
    assert "--env MLFLOW_TRACKING_USERNAME=alice" in line
    assert f"--volume {tmp_path}/data:/data/shapes:ro" in line
    assert "--gpus '\"device=GPU-1234\"'" in line
    assert "--shm-size 1073741824 --cpus 1.5 --memory 2147483648" in line
    assert line.endswith("cvops/trainer-keras:2.21.0 python3 train.py --epochs 3")


@pytest.mark.parametrize("gpus, flag", [("all", "all"), (2, "2"), ([0, 3], '"device=0,3"')])
def test_rendered_gpu_flag_without_placement(spec, gpus, flag):
    args = docker_cli_args(docker_run_kwargs(spec.model_copy(update={"gpus": gpus}), PROVENANCE, TRACKING, Placement()))
    assert args[args.index("--gpus") + 1] == flag


def test_git_provenance_of_the_job_folder(tmp_path):
    job = tmp_path / "repo" / "job"
    job.mkdir(parents=True)
    other = tmp_path / "repo" / "other.txt"
    git = ["git", "-C", str(tmp_path / "repo"), "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run([*git, "init", "-q"], check=True)
    (job / "train.py").write_text("print(1)\n")
    other.write_text("x\n")
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "init"], check=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    assert git_provenance(job) == (head, False)
    other.write_text("changed outside the job folder\n")
    assert git_provenance(job) == (head, False)
    (job / "train.py").write_text("print(2)\n")
    assert git_provenance(job) == (head, True)
    assert git_provenance(tmp_path) == (None, False)


def test_explicit_tracking_uri_on_loopback_uses_the_host_network():
    target = resolve_target(None, "http://127.0.0.1:5123", None, None)
    assert (target.submitter_uri, target.container_uri, target.network) == (
        "http://127.0.0.1:5123", "http://127.0.0.1:5123", "host")
    remote = resolve_target(None, "https://mlflow.example.org", None, None)
    assert remote.network is None


def test_log_lines_reassemble_chunks_and_keep_last_progress_redraw():
    chunks = [b"Epoch 1/", b"3\n", b"1/10 \r5/10 \r10/10 loss 0.5\n", b"caf\xc3", b"\xa9\n", b"no newline"]
    assert list(log_lines(chunks)) == ["Epoch 1/3\n", "10/10 loss 0.5\n", "café\n", "no newline\n"]


def test_a_local_build_is_recorded_by_its_image_id_not_as_a_pullable_digest():
    # `docker image inspect` of a `docker build -t` image (no registry) and of a pulled one.
    local = {"Id": "sha256:" + "1" * 64, "RepoTags": ["cvops/trainer-keras:2.21.0"], "RepoDigests": []}
    pulled = {"Id": "sha256:" + "2" * 64, "RepoTags": ["registry.example.org/cvops/trainer-keras:2.21.0"],
              "RepoDigests": ["registry.example.org/cvops/trainer-keras@sha256:" + "3" * 64]}
    assert image_provenance(local) == (None, "sha256:" + "1" * 64)
    assert image_provenance(pulled) == ("sha256:" + "3" * 64, "sha256:" + "2" * 64)

    env = {"CVOPS_IMAGE": "cvops/trainer-keras:2.21.0", "CVOPS_IMAGE_ID": "sha256:" + "1" * 64}
    tags = schema.standard_tags(load_settings(env))
    assert tags["image"] == "cvops/trainer-keras:2.21.0"  # nothing appended that looks pullable
    assert tags["image_id"] == "sha256:" + "1" * 64
