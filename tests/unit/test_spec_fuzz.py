"""Hostile input (issue 16): job and sweep specs fuzzed with whatever YAML can hold.

Every value either loads into a spec that can be used as it stands (finite numbers, positive
sizes, a command to run), or is refused with JobSpecError / SweepSpecError naming the field it
was given in; never another exception type (a traceback) and never a bad value accepted silently.
"""
import math

from hypothesis import HealthCheck, example, given, settings, strategies as st

from cvops.jobs.spec import JobSpec, JobSpecError, parse_job_spec
from cvops.sweeps.spec import CategoricalParam, SweepSpecError, parse_sweep_spec

# Bounded so the whole file runs in a few seconds.
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# What yaml.safe_load can return for a value: scalars of every kind (big integers, inf and nan,
# dates, text with NUL and other control characters), and lists and mappings of them, with keys
# that are not text either.
yaml_scalars = (st.none() | st.booleans() | st.integers() | st.integers(min_value=10**300, max_value=10**400)
                | st.floats() | st.dates() | st.text(max_size=12)
                | st.sampled_from(["", " ", "\x00", "1e400", "9" * 400 + "g", "-1", "0", "all", "~root/x", "a\x00b"]))
yaml_values = st.recursive(
    yaml_scalars,
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.text(max_size=6) | st.integers() | st.booleans(), children, max_size=3),
    max_leaves=6,
)

VALID_JOB = {"framework": "keras", "image": "cvops/keras:latest", "command": ["python", "train.py"],
             "experiment": "shapes", "datasets": [{"source": "data", "target": "/data"}]}
# Where a value can go: every field of the spec, nested ones included, and a misspelt one.
JOB_FIELDS = {
    **{name: (name,) for name in JobSpec.model_fields if name != "source_file"},
    "datasets[0].source": ("datasets", 0, "source"), "datasets[0].target": ("datasets", 0, "target"),
    "datasets[0].pvc": ("datasets", 0, "pvc"), "datasets[0].sub_path": ("datasets", 0, "sub_path"),
    "resources.cpus": ("resources", "cpus"), "resources.memory": ("resources", "memory"),
    "kubernetes.namespace": ("kubernetes", "namespace"),
    "kubernetes.ttl_seconds_after_finished": ("kubernetes", "ttl_seconds_after_finished"),
    "tags.team": ("tags", "team"), "env.EPOCHS": ("env", "EPOCHS"), "imagee": ("imagee",),
}


def with_value(base: dict, where: tuple, value) -> dict:
    """A deep copy of ``base`` with ``value`` at ``where`` (mappings created along the way)."""
    import copy

    data = copy.deepcopy(base)
    target = data
    for step in where[:-1]:
        if isinstance(target, dict):
            target = target.setdefault(step, {})
        else:
            target = target[step]
    target[where[-1]] = value
    return data


def assert_refused_naming(error: JobSpecError, field: str) -> None:
    assert error.problems, error
    top = field.split(".")[0].split("[")[0]
    for where, message in error.problems:
        assert where.startswith(top), f"{field!r} refused as {where!r}: {message}"
        assert message.strip(), error


def assert_usable(spec: JobSpec) -> None:
    assert spec.image.strip() and spec.experiment.strip()
    assert spec.command and all(isinstance(part, str) for part in spec.command) and spec.command[0].strip()
    if spec.resources.cpus is not None:
        assert math.isfinite(spec.resources.cpus) and spec.resources.cpus > 0
    for size in (spec.resources.memory, spec.shm_size):
        assert size is None or (isinstance(size, int) and size > 0)
    assert spec.gpus == "all" or (isinstance(spec.gpus, int) and spec.gpus >= 0) or (
        isinstance(spec.gpus, list) and spec.gpus and all(isinstance(g, int) and g >= 0 for g in spec.gpus))
    for mapping in (spec.tags, spec.env):
        assert all(isinstance(k, str) and isinstance(v, str) and "\x00" not in v for k, v in mapping.items())
    for mount in spec.datasets:
        assert mount.target.startswith("/") and "\x00" not in mount.target


# Found by this fuzzing, each accepted or a traceback before its fix; kept as fixed examples.
@FUZZ
@given(field=st.sampled_from(sorted(JOB_FIELDS)), value=yaml_values)
@example(field="resources.cpus", value=float("inf"))
@example(field="env.EPOCHS", value="\x00")
@example(field="tags.team", value="a\x00b")
@example(field="datasets[0].source", value="a\x00b")
@example(field="datasets[0].source", value="~no-such-user-cvops/x")
@example(field="code", value="~no-such-user-cvops/x")
def test_any_job_field_value_is_usable_or_refused_by_name(tmp_path_factory, field, value):
    source_file = tmp_path_factory.getbasetemp() / "job.yaml"  # paths resolve against its folder
    try:
        spec = parse_job_spec(with_value(VALID_JOB, JOB_FIELDS[field], value), source_file=source_file)
    except JobSpecError as error:
        assert_refused_naming(error, field)
        return
    assert_usable(spec)


@FUZZ
@given(document=yaml_values)
def test_any_yaml_document_as_a_job_file_is_usable_or_refused(document):
    try:
        spec = parse_job_spec(document)
    except JobSpecError as error:
        assert error.problems
        return
    assert_usable(spec)


VALID_SWEEP = {
    "job": {key: value for key, value in VALID_JOB.items() if key != "datasets"},
    "study": "shapes-lr", "trials": 4, "objective": {"metric": "val_loss", "direction": "min"},
    "search_space": {"lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
                     "batch": {"type": "int", "low": 8, "high": 64, "step": 8},
                     "optimizer": {"type": "categorical", "choices": ["adam", "sgd"]}},
}
SWEEP_FIELDS = {
    **{name: (name,) for name in ("study", "trials", "parallelism", "gpus_per_trial", "sampler", "seed", "pruner",
                                  "enqueue", "storage", "heartbeat_s", "objective", "search_space", "job")},
    **{f"search_space.lr.{key}": ("search_space", "lr", key) for key in ("low", "high", "step", "log", "type")},
    **{f"search_space.batch.{key}": ("search_space", "batch", key) for key in ("low", "high", "step", "log")},
    "search_space.optimizer.choices": ("search_space", "optimizer", "choices"),
    "objective.metric": ("objective", "metric"), "objective.direction": ("objective", "direction"),
    "pruner.type": ("pruner", "type"), "pruner.max_resource": ("pruner", "max_resource"),
    "job.image": ("job", "image"), "job.gpus": ("job", "gpus"),
}


@FUZZ
@given(field=st.sampled_from(sorted(SWEEP_FIELDS)), value=yaml_values)
@example(field="objective.direction", value=[])
@example(field="search_space.batch.low", value=10**400)
@example(field="search_space.lr.high", value=float("inf"))
@example(field="search_space.lr.low", value=float("nan"))
def test_any_sweep_field_value_is_usable_or_refused_by_name(field, value):
    try:
        spec = parse_sweep_spec(with_value(VALID_SWEEP, SWEEP_FIELDS[field], value))
    except SweepSpecError as error:
        assert_refused_naming(error, field)
        return
    for name, param in spec.search_space.items():
        if not isinstance(param, CategoricalParam):
            assert math.isfinite(param.low) and math.isfinite(param.high), name
            assert param.step is None or math.isfinite(param.step), name
        param.distribution()  # what Optuna is given when the sweep runs: it must take it
    assert spec.trials >= 1 and spec.parallelism >= 1
