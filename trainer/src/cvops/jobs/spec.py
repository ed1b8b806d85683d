"""The job spec: one YAML file describing a training container, validated before anything runs.

``load_job_spec(path)`` returns a :class:`JobSpec` whose relative paths are resolved against the
file's folder; every problem is reported at once as ``JobSpecError`` with the dotted path of the
bad field (``datasets[1].target: ...``), so a user can fix the file in one pass.
"""
from __future__ import annotations

import re
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal, Union

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

CODE_MOUNT = "/job"

# Set by `cvops submit` itself; a job file that sets them would silently fight the submitter
# (and would put a password in a file that usually lands in git).
RESERVED_ENV = frozenset(
    {
        "MLFLOW_TRACKING_URI",
        "MLFLOW_TRACKING_USERNAME",
        "MLFLOW_TRACKING_PASSWORD",
        "MLFLOW_TRACKING_TOKEN",
        "MLFLOW_RUN_ID",
        "MLFLOW_EXPERIMENT_NAME",
        "CVOPS_RUN_NAME",
        "CVOPS_IMAGE",
        "CVOPS_IMAGE_DIGEST",
        "CVOPS_GIT_COMMIT",
        "NVIDIA_VISIBLE_DEVICES",
    }
)
RESERVED_TAGS = frozenset({"framework", "git_commit", "git_dirty", "image", "image_digest", "image_id"})
_TAG_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_JOB_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$")
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


class JobSpecError(ValueError):
    """The job file cannot be used; ``problems`` lists ``(field path, message)`` pairs."""

    kind = "job spec"

    def __init__(self, source: str, problems: list[tuple[str, str]]):
        self.source = source
        self.problems = problems
        lines = [f"{source}: {len(problems)} problem(s) in the {self.kind}:"]
        lines += [f"  {where}: {message}" if where else f"  {message}" for where, message in problems]
        super().__init__("\n".join(lines))


def parse_size(value: Any) -> int:
    """Bytes from ``8g``, ``512Mi``, ``1.5G`` or a plain integer (binary units, like Docker)."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as 8g or 512Mi")
    if isinstance(value, int):
        size = value
    else:
        match = _SIZE.match(str(value))
        if not match:
            raise ValueError(f"{value!r} is not a size; use bytes or a k/m/g/t suffix, e.g. 8g or 512Mi")
        number, unit, _ = match.groups()
        size = int(float(number) * _SIZE_UNITS[unit.lower()])
    if size <= 0:
        raise ValueError("must be greater than zero")
    return size


ByteSize = Annotated[int, BeforeValidator(parse_size)]


def _as_text(value: Any) -> Any:
    if isinstance(value, bool):
        return str(value).lower()  # YAML's true -> "true", as a shell would write it
    return value if value is None or isinstance(value, str) else str(value)


class _Strict(BaseModel):
    # inf and nan are floats to YAML (.inf, .nan) but no count of CPUs or bound of a search range.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class DatasetMount(_Strict):
    """A dataset made visible to the job, always read-only (training must not edit its data).

    ``source`` is a host folder (Docker bind mount, Kubernetes hostPath); ``pvc`` names a
    Kubernetes PersistentVolumeClaim instead (Kubernetes only)."""

    target: str
    source: Path | None = None
    pvc: str | None = None
    sub_path: str | None = None

    @field_validator("target")
    @classmethod
    def _absolute_target(cls, target: str) -> str:
        if not PurePosixPath(target).is_absolute():
            raise ValueError(f"{target!r} must be an absolute path inside the container, e.g. /data/shapes")
        return target

    @model_validator(mode="after")
    def _one_source(self) -> "DatasetMount":
        if (self.source is None) == (self.pvc is None):
            raise ValueError("give exactly one of source (a host folder) or pvc (a Kubernetes claim)")
        if self.sub_path and self.pvc is None:
            raise ValueError("sub_path only applies to a pvc")
        return self


class Resources(_Strict):
    cpus: float | None = Field(default=None, gt=0, description="CPU cores the job may use")
    memory: ByteSize | None = Field(default=None, description="memory limit, e.g. 16g")


class KubernetesOptions(_Strict):
    namespace: str | None = None
    credentials_secret: str = Field(
        default="cvops-mlflow-credentials",
        description="Secret with keys `username` and `password` for the tracking server",
    )
    tracking_uri: str | None = Field(default=None, description="the tracking URL as seen from inside the cluster")
    service_account: str | None = None
    ttl_seconds_after_finished: int | None = Field(default=7 * 24 * 3600, ge=0)


GpuRequest = Union[Literal["all"], int, list[int]]


class JobSpec(_Strict):
    """What to run, on which data, tracked where. See docs/jobs.md, "Job spec reference"."""

    framework: Literal["keras", "detectron2", "tfod"]
    image: str = Field(min_length=1)
    command: list[str] = Field(min_length=1)
    name: str | None = None
    code: Path | None = Field(default=None, description=f"host folder with the training code, mounted at {CODE_MOUNT}")
    datasets: list[DatasetMount] = Field(default_factory=list)
    experiment: str = Field(min_length=1)
    run_name: str | None = None
    tags: dict[str, str] = Field(default_factory=dict)
    gpus: GpuRequest = 0
    shm_size: ByteSize | None = None
    resources: Resources = Field(default_factory=Resources)
    env: dict[str, str] = Field(default_factory=dict)
    kubernetes: KubernetesOptions = Field(default_factory=KubernetesOptions)
    source_file: Path | None = Field(default=None, exclude=True, description="set by load_job_spec")

    @field_validator("command", mode="before")
    @classmethod
    def _split_command(cls, command: Any) -> Any:
        if isinstance(command, str):
            import shlex

            return shlex.split(command)
        return command

    @field_validator("name")
    @classmethod
    def _dns_name(cls, name: str | None) -> str | None:
        if name is not None and not _JOB_NAME.match(name):
            raise ValueError(
                f"{name!r} must be 1-40 lowercase letters, digits or '-', starting and ending with a "
                "letter or digit (it names containers and Kubernetes Jobs)"
            )
        return name

    @field_validator("tags", "env", mode="before")
    @classmethod
    def _stringify_values(cls, mapping: Any) -> Any:
        # YAML turns `epochs: 8` and `debug: true` into int/bool; the container only sees strings.
        if isinstance(mapping, dict):
            return {key: _as_text(value) for key, value in mapping.items()}
        return mapping

    @field_validator("tags", "env")
    @classmethod
    def _no_nul_in_values(cls, mapping: dict[str, str]) -> dict[str, str]:
        # A process environment cannot hold a NUL byte: the container would fail to start.
        for name, value in mapping.items():
            if "\x00" in value:
                raise ValueError(f"the value of {name} holds a NUL byte")
        return mapping

    @field_validator("tags")
    @classmethod
    def _tag_names(cls, tags: dict[str, str]) -> dict[str, str]:
        for name in tags:
            if not _TAG_NAME.match(name):
                raise ValueError(
                    f"{name!r}: tag names are lowercase letters, digits and _ (they reach the SDK as "
                    "CVOPS_TAG_<NAME> variables), e.g. team or dataset"
                )
            if name in RESERVED_TAGS:
                raise ValueError(f"{name} is recorded by `cvops submit` itself; remove it here")
        return tags

    @field_validator("env")
    @classmethod
    def _env_names(cls, env: dict[str, str]) -> dict[str, str]:
        for name in env:
            if not _ENV_NAME.match(name):
                raise ValueError(f"{name!r} is not a valid environment variable name")
            if name in RESERVED_ENV:
                raise ValueError(f"{name} is set by `cvops submit` (from your environment and the run); remove it here")
        return env

    @field_validator("gpus", mode="before")
    @classmethod
    def _gpu_request(cls, gpus: Any) -> Any:
        hint = "use all, a count (0 runs on the CPU) or a list of device ids such as [0, 1]"
        if gpus == "all":
            return gpus
        if isinstance(gpus, str) and re.fullmatch(r"\d+(,\d+)*", gpus.replace(" ", "")):
            gpus = [int(part) for part in gpus.replace(" ", "").split(",")] if "," in gpus else int(gpus)
        if isinstance(gpus, int) and not isinstance(gpus, bool) and gpus >= 0:
            return gpus
        if isinstance(gpus, list) and gpus and all(isinstance(g, int) and not isinstance(g, bool) and g >= 0 for g in gpus):
            if len(set(gpus)) != len(gpus):
                raise ValueError(f"device ids {gpus} repeat an id")
            return gpus
        raise ValueError(f"{gpus!r} is not a GPU request; {hint}")

    @field_validator("datasets")
    @classmethod
    def _distinct_targets(cls, datasets: list[DatasetMount]) -> list[DatasetMount]:
        targets = [mount.target.rstrip("/") for mount in datasets]
        repeated = sorted({t for t in targets if targets.count(t) > 1})
        if repeated:
            raise ValueError(f"more than one thing is mounted at {', '.join(repeated)}")
        if CODE_MOUNT in targets:
            raise ValueError(f"{CODE_MOUNT} is where the job's code is mounted; choose another target")
        return datasets

    @property
    def job_name(self) -> str:
        return self.name or f"{self.framework}-job"

    @property
    def job_dir(self) -> Path:
        """Where the job's code lives on this machine (its git commit is what gets tagged)."""
        if self.code is not None:
            return self.code
        return self.source_file.parent if self.source_file else Path.cwd()

    @property
    def wants_gpu(self) -> bool:
        return self.gpus != 0


def _field_path(location: tuple[Any, ...]) -> str:
    path = ""
    for part in location:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


def _problems(error: ValidationError) -> list[tuple[str, str]]:
    seen: dict[str, list[str]] = {}
    for item in error.errors(include_url=False):
        where = _field_path(item["loc"])
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown field (check its spelling against docs/jobs.md)"
        elif item["type"] == "missing":
            message = "required field is missing"
        messages = seen.setdefault(where, [])
        if message not in messages:
            messages.append(message)
    return [(where, "; or ".join(messages)) for where, messages in seen.items()]


def _resolve_paths(spec: JobSpec, base: Path, source: str) -> JobSpec:
    problems: list[tuple[str, str]] = []

    def resolve(path: Path | None, where: str) -> Path | None:
        if path is None:
            return None
        try:
            return (base / path.expanduser()).resolve()
        except (RuntimeError, ValueError, OSError) as problem:  # a NUL byte, ~unknown-user
            problems.append((where, f"{str(path)!r} is not a path on this machine ({problem})"))
            return path

    datasets = [mount.model_copy(update={"source": resolve(mount.source, f"datasets[{index}].source")})
                for index, mount in enumerate(spec.datasets)]
    code = resolve(spec.code, "code")
    if problems:
        raise JobSpecError(source, problems)
    return spec.model_copy(update={"code": code, "datasets": datasets})


def check_host_paths(spec: JobSpec) -> None:
    """For running on this host: the code folder and dataset sources must exist here (a
    Kubernetes rendering needs them on the cluster's nodes instead, so loading does not check)."""
    problems: list[tuple[str, str]] = []
    if spec.code is not None and not spec.code.is_dir():
        problems.append(("code", f"{spec.code} is not a folder on this machine"))
    for index, mount in enumerate(spec.datasets):
        if mount.source is not None and not mount.source.exists():
            problems.append((f"datasets[{index}].source", f"{mount.source} does not exist on this machine"))
    if problems:
        raise JobSpecError(str(spec.source_file or "job spec"), problems)


def parse_job_spec(data: Any, *, source_file: Path | None = None) -> JobSpec:
    """Validate a mapping (parsed YAML); relative paths resolve against ``source_file``'s folder."""
    source = str(source_file or "job spec")
    if not isinstance(data, dict):
        raise JobSpecError(source, [("", f"the top level must be a mapping of fields, not {type(data).__name__}")])
    try:
        spec = JobSpec.model_validate(data)
    except ValidationError as error:
        raise JobSpecError(source, _problems(error)) from None
    if source_file is None:
        return spec
    return _resolve_paths(spec.model_copy(update={"source_file": source_file}), source_file.parent, source)


def read_spec_file(path: Path, error: type[JobSpecError] = JobSpecError) -> Any:
    """The parsed YAML of a spec file; unreadable or invalid YAML raises ``error``."""
    import yaml

    try:
        text = path.read_text()
    except OSError as problem:
        raise error(str(path), [("", f"cannot read the file: {problem.strerror}")]) from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as problem:
        mark = getattr(problem, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise error(str(path), [(where, f"not valid YAML: {getattr(problem, 'problem', problem)}")]) from None


def load_job_spec(path: str | Path) -> JobSpec:
    path = Path(path).expanduser().resolve()
    return parse_job_spec(read_spec_file(path), source_file=path)
