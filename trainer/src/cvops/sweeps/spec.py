"""The sweep spec: a job spec as template, a search space and an objective, validated up front.

``load_sweep_spec(path)`` returns a :class:`SweepSpec`; like the job spec, every problem is
reported at once as ``SweepSpecError`` naming the field (``search_space.lr.low: ...``). The
template job (a path relative to the sweep file, or the job inline) is validated by the job
spec's own rules, its problems prefixed with ``job.``.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from cvops.jobs.spec import JobSpec, JobSpecError, _problems, load_job_spec, parse_job_spec, read_spec_file

STORAGE_ENV = "CVOPS_SWEEP_STORAGE"
_PARAM_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*$")
_UNION_TAG = re.compile(r"^(search_space\.[^.]+)\.(?:float|int|categorical)(?=\.|$)")
_STUDY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
# MLflow's alias rules: letters, digits, '_' and '-'; v<number> and latest name versions already.
_ALIAS = re.compile(r"^[A-Za-z0-9_-]{1,255}$")
_RESERVED_ALIAS = re.compile(r"^(v\d+|latest)$", re.IGNORECASE)


class SweepSpecError(JobSpecError):
    """The sweep file cannot be used; ``problems`` lists ``(field path, message)`` pairs."""

    kind = "sweep spec"


class _Strict(BaseModel):
    # inf and nan are floats to YAML (.inf, .nan) but no count of CPUs or bound of a search range.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class _Param(_Strict):
    # Conditional search space: this parameter is sampled only in trials whose categorical
    # parameters have one of these values (Optuna's define-by-run, after the trial is asked).
    when: dict[str, Union[str, int, float, bool, None, list[Union[str, int, float, bool, None]]]] | None = Field(
        default=None, description="sampled only when each named categorical parameter has one of these values",
    )

    def applies_to(self, params: dict[str, Any]) -> bool:
        return all(params.get(name, _ABSENT) in _values(wanted) for name, wanted in (self.when or {}).items())


_ABSENT = object()


def _values(wanted: Any) -> list:
    return wanted if isinstance(wanted, list) else [wanted]


class _Range(_Param):
    low: float
    high: float
    log: bool = False
    step: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _ordered(self):
        if self.low >= self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError("a log range needs low > 0")
        if self.log and self.step is not None:
            raise ValueError("step and log cannot be combined (Optuna samples one or the other)")
        return self


class FloatParam(_Range):
    type: Literal["float"]

    def distribution(self):
        from optuna.distributions import FloatDistribution

        return FloatDistribution(self.low, self.high, log=self.log, step=self.step)

    def suggest(self, trial, name: str) -> Any:
        return trial.suggest_float(name, self.low, self.high, log=self.log, step=self.step)

    def contains(self, value: Any) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and self.low <= value <= self.high


class IntParam(_Range):
    type: Literal["int"]
    low: int
    high: int
    step: int | None = Field(default=None, gt=0)

    def distribution(self):
        from optuna.distributions import IntDistribution

        return IntDistribution(self.low, self.high, log=self.log, step=self.step or 1)

    def suggest(self, trial, name: str) -> Any:
        return trial.suggest_int(name, self.low, self.high, log=self.log, step=self.step or 1)

    def contains(self, value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and self.low <= value <= self.high


class CategoricalParam(_Param):
    type: Literal["categorical"]
    choices: list[Union[str, int, float, bool, None]] = Field(min_length=1)

    @field_validator("choices")
    @classmethod
    def _distinct(cls, choices: list) -> list:
        if len({repr(choice) for choice in choices}) != len(choices):
            raise ValueError("a choice is listed twice")
        return choices

    def distribution(self):
        from optuna.distributions import CategoricalDistribution

        return CategoricalDistribution(self.choices)

    def suggest(self, trial, name: str) -> Any:
        return trial.suggest_categorical(name, self.choices)

    def contains(self, value: Any) -> bool:
        return value in self.choices


SearchParam = Annotated[Union[FloatParam, IntParam, CategoricalParam], Field(discriminator="type")]


class Objective(_Strict):
    metric: str = Field(min_length=1, description="a metric the trial logs, e.g. val_loss or bbox/AP")
    direction: Literal["maximize", "minimize"]

    @field_validator("direction", mode="before")
    @classmethod
    def _short_direction(cls, direction: Any) -> Any:
        if isinstance(direction, str):  # anything else is refused below as not a direction
            return {"max": "maximize", "min": "minimize"}.get(direction, direction)
        return direction


class PrunerSpec(_Strict):
    """``median``: stop a trial whose intermediate objective is worse than the median of the
    completed trials at the same step; ``hyperband``: successive halving over ``max_resource`` steps."""

    type: Literal["none", "median", "hyperband"] = "none"
    startup_trials: int = Field(default=5, ge=0, description="median: completed trials before pruning starts")
    warmup_steps: int = Field(default=0, ge=0, description="median: steps of each trial never pruned")
    min_resource: int = Field(default=1, ge=1, description="hyperband")
    max_resource: Union[int, Literal["auto"]] = Field(default="auto", description="hyperband")
    reduction_factor: int = Field(default=3, ge=2, description="hyperband")

    def build(self):
        import optuna

        if self.type == "median":
            return optuna.pruners.MedianPruner(n_startup_trials=self.startup_trials, n_warmup_steps=self.warmup_steps)
        if self.type == "hyperband":
            return optuna.pruners.HyperbandPruner(
                min_resource=self.min_resource, max_resource=self.max_resource, reduction_factor=self.reduction_factor
            )
        return optuna.pruners.NopPruner()


class RegisterSpec(_Strict):
    """When the sweep ends, register the best complete trial's logged model."""

    name: str = Field(min_length=1, description="the registered model the version is added to")
    alias: str | None = Field(default=None, description="an alias set on the new version, e.g. challenger")
    model: str = Field(default="model", min_length=1, description="the logged model's name in the trial's run")

    @field_validator("alias")
    @classmethod
    def _alias(cls, alias: str | None) -> str | None:
        if alias is None:
            return alias
        if not _ALIAS.match(alias) or _RESERVED_ALIAS.match(alias):
            raise ValueError(f"{alias!r}: an alias is letters, digits, '_' and '-', and not v<number> or latest")
        from cvops.registry import CHAMPION

        if alias == CHAMPION:
            raise ValueError(f"{CHAMPION} moves through the promotion gate (cvops.registry.promote), not from a "
                             "sweep; use e.g. challenger")
        return alias


class SweepKubernetes(_Strict):
    """For `cvops sweep --render k8s`; the rest (namespace, tracking URL, credentials) is the job's."""

    storage_secret: str = Field(
        default="cvops-sweep-storage", min_length=1,
        description=f"the Secret whose key `url` is the study storage URL the pods get as {STORAGE_ENV}",
    )


class SweepSpec(_Strict):
    """See docs/sweeps.md, "Sweep spec reference"."""

    job: Union[str, dict[str, Any]] = Field(description="the template job: a job spec file or the job inline")
    study: str = Field(description="the Optuna study's name; several sweep processes share it")
    search_space: dict[str, SearchParam] = Field(min_length=1)
    objective: Objective
    trials: int = Field(ge=1, description="the study's trial budget, counting every process's trials")
    parallelism: int = Field(default=1, ge=1, description="trials running at once in one `cvops sweep`")
    gpus_per_trial: int = Field(default=0, ge=0)
    trials_in: Literal["local", "docker"] = Field(
        default="local", description="local: the job's command as a process here; docker: a container of its image"
    )
    sampler: Literal["tpe", "random"] = "tpe"
    seed: int | None = Field(default=None, ge=0, description="the sampler's seed")
    pruner: PrunerSpec = Field(default_factory=PrunerSpec)
    enqueue: list[dict[str, Any]] = Field(
        default_factory=list, description="parameter sets tried first (known-good configs), in order"
    )
    storage: str | None = Field(default=None, description=f"Optuna RDB URL; {STORAGE_ENV} overrides it")
    heartbeat_s: int = Field(
        default=30, ge=1, description="how often a sweep process marks its running trials alive in the study"
    )
    # `register` in the file; the attribute name would shadow pydantic's BaseModel.register.
    registration: RegisterSpec | None = Field(
        default=None, alias="register", description="register the best trial's model at the end"
    )
    kubernetes: SweepKubernetes = Field(default_factory=SweepKubernetes)
    source_file: Path | None = Field(default=None, exclude=True)

    @field_validator("pruner", mode="before")
    @classmethod
    def _pruner_by_name(cls, pruner: Any) -> Any:
        return {"type": pruner} if isinstance(pruner, str) else pruner

    @field_validator("study")
    @classmethod
    def _study_name(cls, study: str) -> str:
        if not _STUDY_NAME.match(study):
            raise ValueError(f"{study!r}: use letters, digits, '.', '_' or '-' (it names the parent run too)")
        return study

    @field_validator("search_space")
    @classmethod
    def _param_names(cls, space: dict[str, Any]) -> dict[str, Any]:
        for name in space:
            if not _PARAM_NAME.match(name):
                raise ValueError(f"{name!r}: parameter names are letters, digits, '_' and '.'")
        return space

    def ask(self, study):
        """A new trial of ``study``: the unconditional parameters asked at once, then each
        conditional one suggested when its condition holds (an enqueued value is kept)."""
        trial = study.ask({name: param.distribution() for name, param in self.search_space.items() if not param.when})
        for name, param in self.search_space.items():
            if param.when and param.applies_to(trial.params):
                param.suggest(trial, name)
        return trial

    def storage_url(self, environ) -> str:
        url = (environ.get(STORAGE_ENV) or "").strip() or self.storage
        if not url:
            raise SweepSpecError(
                str(self.source_file or "sweep spec"),
                [("storage", f"no study storage: set {STORAGE_ENV} (e.g. postgresql+psycopg2://…/optuna) or storage:")],
            )
        return url


def template_job(spec: SweepSpec) -> JobSpec:
    """The job every trial runs (already validated when the sweep spec was loaded)."""
    if isinstance(spec.job, dict):
        return parse_job_spec(spec.job, source_file=spec.source_file)
    base = spec.source_file.parent if spec.source_file else Path.cwd()
    return load_job_spec(base / spec.job)


def parse_sweep_spec(data: Any, *, source_file: Path | None = None) -> SweepSpec:
    source = str(source_file or "sweep spec")
    if not isinstance(data, dict):
        raise SweepSpecError(source, [("", f"the top level must be a mapping of fields, not {type(data).__name__}")])
    try:
        spec = SweepSpec.model_validate(data)
    except ValidationError as error:
        raise SweepSpecError(source, _sweep_problems(error)) from None
    spec = spec.model_copy(update={"source_file": source_file})
    problems = _condition_problems(spec) or _enqueue_problems(spec)
    if problems:
        raise SweepSpecError(source, problems)
    try:
        template_job(spec)
    except JobSpecError as error:
        prefix = "job" if isinstance(spec.job, dict) else f"job ({error.source})"
        raise SweepSpecError(
            source, [(f"{prefix}.{where}" if where else prefix, message) for where, message in error.problems]
        ) from None
    return spec


def _condition_problems(spec: SweepSpec) -> list[tuple[str, str]]:
    """A condition names an unconditional categorical parameter and values among its choices:
    conditions are then decided right after the trial is asked, and cannot form a cycle."""
    problems = []
    for name, param in spec.search_space.items():
        for other, wanted in (param.when or {}).items():
            condition, where = spec.search_space.get(other), f"search_space.{name}.when.{other}"
            if condition is None or other == name:
                problems.append((where, "not another parameter of search_space"))
            elif not isinstance(condition, CategoricalParam) or condition.when:
                problems.append((where, "a condition names a categorical parameter without a when: of its own"))
            elif missing := [value for value in _values(wanted) if value not in condition.choices]:
                problems.append((where, f"{missing!r} not among its choices {condition.choices!r}"))
    return problems


def _enqueue_problems(spec: SweepSpec) -> list[tuple[str, str]]:
    problems = []
    for index, params in enumerate(spec.enqueue):
        for name, value in params.items():
            param = spec.search_space.get(name)
            if param is None:
                problems.append((f"enqueue[{index}].{name}", "not a parameter of search_space"))
            elif not param.contains(value):
                problems.append((f"enqueue[{index}].{name}", f"{value!r} is outside its search_space range"))
            elif not param.applies_to(params):
                problems.append((f"enqueue[{index}].{name}", f"sampled only when {param.when!r}, which these "
                                                              "parameters do not meet"))
    return problems


def _sweep_problems(error: ValidationError) -> list[tuple[str, str]]:
    problems = []
    for where, message in _problems(error):
        # A discriminated union adds the member's tag to the path: search_space.lr.float.low.
        where = _UNION_TAG.sub(r"\1", where)
        if where.startswith("search_space.") and "'type'" in message:
            message = "give type: float, int or categorical"
        problems.append((where, message))
    return problems


def load_sweep_spec(path: str | Path) -> SweepSpec:
    path = Path(path).expanduser().resolve()
    return parse_sweep_spec(read_spec_file(path, SweepSpecError), source_file=path)
