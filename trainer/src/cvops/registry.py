"""Models and the registry: log + register, aliases, a promotion gate, a model card.

    version = registry.log_model_and_register(run, model, flavor="pytorch", registered_model_name="detector",
                                              input_example=batch)
    decision = registry.promote("detector", version.version, gates=[
        registry.Gate("bbox/AP", higher_is_better=True, min_value=35.0),
        registry.Gate("latency_p95_ms", higher_is_better=False, max_value=50.0),
    ])
    print(decision.summary())          # moves models:/detector@champion only if every gate passed

These calls talk to the server synchronously (they happen once, after training) through
``MlflowClient`` with MLflow's own retries.
"""
from __future__ import annotations

import contextlib
import importlib
import json
import math
import os
import tempfile
import types
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from cvops.config import export_when
from cvops.detection_schema import CLASS_NAMES_TAG, class_names_tag_value
from cvops.tracking.names import sanitize_metric_name

CHAMPION = "champion"
DECISION_TAG = "cvops.promotion_decision"
MODEL_CARD_FILE = "model_card.md"
_CARD_TAGS = ("task", "framework", "backbone", "dataset", "env", "team", "git_commit", "image", "hardware")


@dataclass(frozen=True)
class RegisteredVersion:
    name: str
    version: str
    model_uri: str  # runs:/… or models:/m-… as MLflow logged it
    run_id: str

    @property
    def registry_uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


def load_registered_version(name: str, version: str | int):
    """Load ``models:/<name>/<version>`` as a pyfunc model from a folder of its own; returns the
    model and that folder's ``TemporaryDirectory``, which removes the copy when cleaned up or when
    the last reference to it goes. MLflow's default, a ``mkdtemp()`` never removed, left a copy
    of the model (100 MB and more) on the disk at every load."""
    import mlflow.pyfunc

    files = tempfile.TemporaryDirectory(prefix=f"cvops-model-{name}-v{version}-")
    try:
        return mlflow.pyfunc.load_model(f"models:/{name}/{version}", dst_path=files.name), files
    except BaseException:
        files.cleanup()
        raise


def _client(run) -> MlflowClient:
    return MlflowClient(tracking_uri=run.tracking_uri)


def _flavor_module(flavor: str | types.ModuleType) -> types.ModuleType:
    if isinstance(flavor, types.ModuleType):
        return flavor
    try:
        return importlib.import_module(f"mlflow.{flavor}")
    except ImportError as exc:
        raise ValueError(f"unknown or unavailable MLflow flavor {flavor!r} ({exc}); "
                         "use e.g. 'pytorch', 'keras', 'tensorflow', 'onnx', 'pyfunc'") from None


def log_model(run, model: Any, flavor: str | types.ModuleType, *, name: str = "model", signature=None,
              input_example=None, registered_model_name: str | None = None,
              class_names: Sequence[str] | Mapping[int, str] | None = None, **flavor_kwargs):
    """Log ``model`` with MLflow flavor ``flavor`` to ``run`` (MLflow 3 ``name=``), registered too
    when ``registered_model_name`` is given; MLflow's ``ModelInfo``. A sweep's trials log without
    registering: the sweep registers the best one (:func:`register_logged_model`).

    ``signature`` is inferred from ``input_example`` by MLflow when not given. ``class_names``
    become the logged model's tag ``cvops.class_names``, which :func:`register_logged_model`
    carries over to the version it registers.
    """
    if not getattr(run, "enabled", False):
        raise RuntimeError("logging a model needs a tracked run (tracking is off for this one)")
    run.flush()
    run_id = run.run_id
    if run_id is None:
        raise RuntimeError("the run has not reached the tracking server yet (it is offline); log "
                           "the model after `cvops sync`")
    from mlflow.models import Model

    client = _client(run)
    with _tracking_uri(client.tracking_uri), _active_experiment(run.experiment_id):
        info = Model.log(
            artifact_path=None, name=name, flavor=_flavor_module(flavor), run_id=run_id,
            registered_model_name=registered_model_name, signature=signature, input_example=input_example,
            **_model_argument(flavor, model), **flavor_kwargs,
        )
    if class_names:
        client.set_logged_model_tags(info.model_id, {CLASS_NAMES_TAG: class_names_tag_value(class_names)})
    return info


def log_model_and_register(run, model: Any, flavor: str | types.ModuleType, *, registered_model_name: str,
                           name: str = "model", signature=None, input_example=None,
                           aliases: Iterable[str] = (), class_names: Sequence[str] | Mapping[int, str] | None = None,
                           **flavor_kwargs) -> RegisteredVersion:
    """:func:`log_model` and register it; ``aliases`` are set on the new version right away (use
    :func:`promote` for ``champion``). ``class_names`` (a list indexed by class id, or id -> name)
    become the version tag ``cvops.class_names``, which the inference server answers names with and
    :func:`cvops.evaluation.evaluate_registered_model` matches the model's classes to a dataset's
    categories with."""
    info = log_model(run, model, flavor, name=name, signature=signature, input_example=input_example,
                     registered_model_name=registered_model_name, class_names=class_names, **flavor_kwargs)
    version = str(info.registered_model_version)
    client = _client(run)
    if class_names:
        client.set_model_version_tag(registered_model_name, version, CLASS_NAMES_TAG, class_names_tag_value(class_names))
    for alias in aliases:
        client.set_registered_model_alias(registered_model_name, alias, version)
    return RegisteredVersion(registered_model_name, version, info.model_uri, run.run_id)


def register_logged_model(tracking_uri: str, run_id: str, registered_model_name: str, *, name: str = "model",
                          aliases: Iterable[str] = ()) -> RegisteredVersion:
    """Register the model a run already logged as ``name`` (the newest, if it logged several):
    for a model chosen after training, e.g. a sweep's best trial. LookupError if there is none."""
    client = MlflowClient(tracking_uri=tracking_uri)
    experiment_id = client.get_run(run_id).info.experiment_id
    found = client.search_logged_models(
        [experiment_id], filter_string=f"source_run_id = '{run_id}' AND name = '{name}'", max_results=1,
        order_by=[{"field_name": "creation_timestamp", "ascending": False}],
    )
    if not found:
        raise LookupError(f"run {run_id} logged no model named {name!r}")
    with _tracking_uri(tracking_uri):
        version = mlflow.register_model(found[0].model_uri, registered_model_name)
    if CLASS_NAMES_TAG in found[0].tags:  # as the trial logged it: serving and evaluation name classes by it
        client.set_model_version_tag(registered_model_name, version.version, CLASS_NAMES_TAG,
                                     found[0].tags[CLASS_NAMES_TAG])
    for alias in aliases:
        client.set_registered_model_alias(registered_model_name, alias, version.version)
    return RegisteredVersion(registered_model_name, str(version.version), found[0].model_uri, run_id)


@contextlib.contextmanager
def _tracking_uri(uri: str):
    """MLflow's Model.log talks to the process's tracking URI: point it at the run's server for
    the call, then leave MLflow's setting and the MLFLOW_TRACKING_URI it writes exactly as they
    were. Restoring through ``set_tracking_uri(get_tracking_uri())`` pinned the URI for the rest of
    the process, so a later MLFLOW_TRACKING_URI (another server) was ignored."""
    from mlflow.tracking._tracking_service import utils

    previous_setting, previous_variable = utils._tracking_uri, os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        if previous_setting is None:
            utils._tracking_uri = None
        else:
            mlflow.set_tracking_uri(previous_setting)
        if previous_variable is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = previous_variable


@contextlib.contextmanager
def _active_experiment(experiment_id: str):
    """MLflow 3 files a logged model under the process's *active* experiment (Default unless set),
    not under its source run's: there a team member may only read, so logging fails with 403 and
    the model would sit apart from its run. Only the in-process setting is swapped (set_experiment
    would also rewrite MLFLOW_EXPERIMENT_ID for child processes) and put back afterwards."""
    from mlflow.tracking import fluent

    previous = fluent._active_experiment_id
    fluent._active_experiment_id = experiment_id
    try:
        yield
    finally:
        fluent._active_experiment_id = previous


def _model_argument(flavor, model) -> dict[str, Any]:
    """Each flavor's save_model names its model argument differently."""
    flavor_name = flavor if isinstance(flavor, str) else flavor.__name__.rsplit(".", 1)[-1]
    keyword = {"pytorch": "pytorch_model", "onnx": "onnx_model", "sklearn": "sk_model",
               "pyfunc": "python_model"}.get(flavor_name, "model")
    return {keyword: model}


def set_alias(registered_model_name: str, alias: str, version: str | int, client: MlflowClient | None = None) -> None:
    (client or MlflowClient()).set_registered_model_alias(registered_model_name, alias, str(version))


# --------------------------------------------------------------------------- promotion gate


@dataclass(frozen=True)
class Gate:
    """One metric the challenger must satisfy.

    ``higher_is_better``: the direction. ``min_value``/``max_value``: absolute bounds.
    ``min_improvement``: how much better than the champion it must be (0 = at least as good;
    negative = a tolerated regression, e.g. -0.5 AP).
    """

    metric: str
    higher_is_better: bool = True
    min_value: float | None = None
    max_value: float | None = None
    min_improvement: float = 0.0


@dataclass(frozen=True)
class GateCheck:
    metric: str
    passed: bool
    challenger: float | None
    champion: float | None
    reason: str


@dataclass(frozen=True)
class Reevaluation:
    """The fair comparison behind a decision: both versions scored on one dataset by the same
    code (cvops.evaluation.evaluate_registered_model). ``challenger``/``champion``: the
    evaluation runs as ``{"model_uri", "run_id", "metrics"}``; no champion, None."""

    dataset: str
    dataset_digest: str
    challenger: dict
    champion: dict | None


@dataclass
class PromotionDecision:
    registered_model_name: str
    alias: str
    challenger_version: str
    champion_version: str | None
    promoted: bool
    checks: list[GateCheck] = field(default_factory=list)
    reevaluation: Reevaluation | None = None  # None: gated on the metrics each version's run logged
    exports: dict[str, str] = field(default_factory=dict)  # format -> "passed" / "failed: why" (export at promotion)

    def summary(self) -> str:
        verdict = "PROMOTED" if self.promoted else "NOT promoted"
        champion = f"v{self.champion_version}" if self.champion_version else "no current champion"
        lines = [f"{self.registered_model_name} v{self.challenger_version} {verdict} to @{self.alias} "
                 f"(vs {champion})"]
        if self.reevaluation is not None:
            runs = [f"challenger run {self.reevaluation.challenger['run_id']}"]
            if self.reevaluation.champion is not None:
                runs.append(f"champion run {self.reevaluation.champion['run_id']}")
            lines.append(f"  re-evaluated on {self.reevaluation.dataset} (digest {self.reevaluation.dataset_digest}): "
                         + ", ".join(runs))
        lines += [f"  [{'pass' if c.passed else 'FAIL'}] {c.metric}: {c.reason}" for c in self.checks]
        lines += [f"  export {format_name}: {verdict}" for format_name, verdict in self.exports.items()]
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return asdict(self)


def _run_metrics(client: MlflowClient, run_id: str) -> dict[str, float]:
    return dict(client.get_run(run_id).data.metrics)


def _check(gate: Gate, challenger: dict[str, float], champion: dict[str, float] | None) -> GateCheck:
    metric = sanitize_metric_name(gate.metric)
    value = challenger.get(metric)
    reference = champion.get(metric) if champion is not None else None
    if value is None:
        return GateCheck(gate.metric, False, value, reference, "the challenger has no value for this metric")
    if math.isnan(value):
        # COCO tools report AP as NaN when a model detected nothing at all: never promotable.
        return GateCheck(gate.metric, False, value, reference,
                         "the challenger's value is NaN (COCO reports NaN AP when the model detected nothing)")
    if gate.min_value is not None and value < gate.min_value:
        return GateCheck(gate.metric, False, value, reference, f"{value:g} < minimum {gate.min_value:g}")
    if gate.max_value is not None and value > gate.max_value:
        return GateCheck(gate.metric, False, value, reference, f"{value:g} > maximum {gate.max_value:g}")
    if reference is None:
        return GateCheck(gate.metric, True, value, reference, f"{value:g} within bounds; no champion value")
    if math.isnan(reference):
        # A champion that detected nothing sets no bar to beat; the bounds still apply.
        return GateCheck(gate.metric, True, value, reference,
                         f"{value:g} within bounds; the champion's value is NaN, so there is nothing to beat")
    improvement = value - reference if gate.higher_is_better else reference - value
    direction = "higher" if gate.higher_is_better else "lower"
    if improvement < gate.min_improvement:
        return GateCheck(gate.metric, False, value, reference,
                         f"{value:g} vs champion {reference:g}: improvement {improvement:g} < required "
                         f"{gate.min_improvement:g} ({direction} is better)")
    return GateCheck(gate.metric, True, value, reference,
                     f"{value:g} vs champion {reference:g}: improvement {improvement:g} ({direction} is better)")


def promote(registered_model_name: str, challenger_version: str | int, gates: Iterable[Gate],
            alias: str = CHAMPION, client: MlflowClient | None = None, dry_run: bool = False,
            reevaluate_on: Any = None, class_names: Sequence[str] | Mapping[int, str] | None = None,
            export: bool | None = None) -> PromotionDecision:
    """Compare a version's metrics with the current ``alias`` holder's and the gates' bounds.

    By default the metrics are those each version's training run logged, possibly on different
    data with different code. ``reevaluate_on`` (a detection dataset: a path or a
    ``DetectionDataset``, cvops.detection_dataset) makes it fair: challenger and champion are
    each evaluated on it by :func:`cvops.evaluation.evaluate_registered_model` (``class_names``
    is passed on), the gates read those runs' metrics (``eval/mAP``, ``eval/AP/<class>``,
    ``inference/latency_p95_ms``...), and the decision records the dataset digest and both
    evaluations (run ids; headline and gated metrics, all of them are on the runs); the version's
    description (its model card) gets a section showing them.

    NaN (what COCO evaluators report for AP when a model detected nothing) fails a challenger's
    gate; a champion's NaN leaves only the bounds to check. cvops' own ``eval/mAP`` is 0, not
    NaN, in that case (cvops.evaluation), so it never hits this rule.

    The alias moves to the challenger only when every gate passes (and not with ``dry_run``).
    The decision is also stored as the tag ``cvops.promotion_decision`` on the challenger version.

    ``export`` (default: ``CVOPS_EXPORT=promote`` in the environment): once promoted, the version
    is exported to its deployment formats (cvops.export.export_registered_version; its framework
    must be importable here), checked on the first images of ``reevaluate_on``, else on its input
    example; the verdicts are in the decision's ``exports``. A failed export never undoes the
    promotion.
    """
    client = client or MlflowClient()
    # Read before deciding: a bad CVOPS_EXPORT is refused before the alias can move.
    export_if_promoted = export if export is not None else export_when(os.environ) == "promote"
    gates = list(gates)
    if not gates:
        raise ValueError("promote needs at least one Gate; promoting without criteria is what it prevents")
    challenger = client.get_model_version(registered_model_name, str(challenger_version))
    try:
        champion = client.get_model_version_by_alias(registered_model_name, alias)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST" and "alias" not in str(exc).lower():
            raise
        champion = None
    if champion is not None and champion.version == challenger.version:
        champion = None  # re-evaluating the current champion: bounds only
    reevaluation = None
    dataset = _detection_dataset(reevaluate_on) if reevaluate_on is not None else None
    if dataset is None:
        challenger_metrics = _run_metrics(client, challenger.run_id)
        champion_metrics = _run_metrics(client, champion.run_id) if champion is not None else None
    else:
        reevaluation = _reevaluate(registered_model_name, challenger, champion, dataset, class_names,
                                   [sanitize_metric_name(gate.metric) for gate in gates], client)
        challenger_metrics = reevaluation.challenger["metrics"]
        champion_metrics = reevaluation.champion["metrics"] if reevaluation.champion is not None else None
    checks = [_check(gate, challenger_metrics, champion_metrics) for gate in gates]
    decision = PromotionDecision(
        registered_model_name=registered_model_name, alias=alias, challenger_version=str(challenger.version),
        champion_version=str(champion.version) if champion is not None else None,
        promoted=all(check.passed for check in checks) and not dry_run, checks=checks, reevaluation=reevaluation,
    )
    if decision.promoted:
        client.set_registered_model_alias(registered_model_name, alias, str(challenger.version))
        if export_if_promoted:
            decision.exports = _export_promoted(registered_model_name, challenger.version, dataset, client)
    client.set_model_version_tag(registered_model_name, str(challenger.version), DECISION_TAG,
                                 json.dumps(decision.to_dict())[:5000])
    if reevaluation is not None:
        description = client.get_model_version(registered_model_name, str(challenger.version)).description or ""
        section = promotion_section(decision)
        # The card (log_model_card) stays, its previous promotion section is replaced; the
        # registry's description column holds 5000 characters.
        card = description.split(PROMOTION_SECTION, 1)[0].rstrip()[:_DESCRIPTION_LIMIT - len(section) - 2]
        client.update_model_version(registered_model_name, str(challenger.version),
                                    description=f"{card}\n\n{section}".lstrip()[:_DESCRIPTION_LIMIT])
    return decision


def _detection_dataset(dataset: Any):
    from cvops.detection_dataset import DetectionDataset, load_detection_dataset

    return dataset if isinstance(dataset, DetectionDataset) else load_detection_dataset(dataset)


def _export_promoted(name: str, version: str, dataset, client: MlflowClient) -> dict[str, str]:
    from cvops import export

    images = dataset.load_images(limit=export.CHECK_SAMPLES) if dataset is not None else None
    results = export.export_registered_version(name, version, images, client=client)
    return {format_name: "passed" if result.passed else f"failed: {result.reason}"
            for format_name, result in results.items()}


def _reevaluate(name: str, challenger, champion, data, class_names, gated: list[str],
                client: MlflowClient) -> Reevaluation:
    from cvops.evaluation import evaluate_registered_model

    evaluations = [
        evaluate_registered_model(f"models:/{name}/{version.version}", data, class_names=class_names, client=client)
        for version in (challenger, champion) if version is not None
    ]
    return Reevaluation(
        dataset=str(data.annotations), dataset_digest=evaluations[0].dataset_digest,
        challenger=evaluations[0].record(also=gated),
        champion=evaluations[1].record(also=gated) if champion is not None else None,
    )


PROMOTION_SECTION = "## Promotion evaluation"
_DESCRIPTION_LIMIT = 5000


def promotion_section(decision: PromotionDecision) -> str:
    """Markdown for the model card: the dataset both versions were scored on, each evaluation run
    and the gated numbers side by side."""
    evaluated = decision.reevaluation
    verdict = "promoted" if decision.promoted else "not promoted"
    lines = [PROMOTION_SECTION, "",
             f"v{decision.challenger_version} {verdict} to `@{decision.alias}`, both versions evaluated by "
             f"`cvops.evaluation.evaluate_registered_model` on `{evaluated.dataset}` "
             f"(digest `{evaluated.dataset_digest}`).", "",
             "| | version | evaluation run |", "|---|---|---|",
             f"| challenger | {decision.challenger_version} | `{evaluated.challenger['run_id']}` |"]
    if evaluated.champion is not None:
        lines.append(f"| champion | {decision.champion_version} | `{evaluated.champion['run_id']}` |")
    lines += ["", "| gate | challenger | champion | result |", "|---|---|---|---|"]
    for check in decision.checks:
        champion = "" if check.champion is None else f"{check.champion:.6g}"
        challenger = "" if check.challenger is None else f"{check.challenger:.6g}"
        lines.append(f"| {check.metric} | {challenger} | {champion} | {'pass' if check.passed else 'FAIL'}: "
                     f"{check.reason} |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- model card


def model_card(run_id: str, client: MlflowClient | None = None, *, intended_use: str = "",
               limitations: str = "", registered_version: RegisteredVersion | None = None) -> str:
    """A markdown model card built from what the run recorded: data, params, metrics, environment."""
    client = client or MlflowClient()
    run = client.get_run(run_id)
    tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
    title = registered_version.name if registered_version else tags.get("mlflow.runName", run_id)
    lines = [f"# Model card: {title}", ""]
    if registered_version:
        lines += [f"Registered as `{registered_version.registry_uri}`.", ""]
    lines += ["## Intended use", "", intended_use or "_Not stated by the training job._", ""]
    lines += ["## Training data", ""]
    inputs = run.inputs.dataset_inputs if run.inputs else []
    if inputs:
        lines += ["| name | context | digest | source |", "|---|---|---|---|"]
        for dataset_input in inputs:
            context = next((t.value for t in dataset_input.tags if t.key == "mlflow.data.context"), "")
            dataset = dataset_input.dataset
            lines.append(f"| {dataset.name} | {context} | `{dataset.digest}` | {dataset.source} |")
    else:
        lines.append(f"Dataset tag: {tags.get('dataset', '_not recorded_')}")
    lines += ["", "## Metrics (last logged value)", ""]
    if metrics:
        lines += ["| metric | value |", "|---|---|"]
        lines += [f"| {name} | {value:.6g} |" for name, value in sorted(metrics.items())
                  if not name.startswith("system/")]
    else:
        lines.append("_No metrics recorded._")
    lines += ["", "## Training setup", "", "| | |", "|---|---|"]
    lines += [f"| {name} | {tags[name]} |" for name in _CARD_TAGS if tags.get(name)]
    lines += [f"| run | `{run_id}` ({run.info.status}) |"]
    important = {k: v for k, v in sorted(params.items()) if not k.startswith(("version.", "python_version"))}
    if important:
        lines += ["", "<details><summary>Parameters</summary>", "", "| param | value |", "|---|---|"]
        lines += [f"| {k} | {v[:200]} |" for k, v in important.items()]
        lines += ["", "</details>"]
    lines += ["", "## Limitations", "", limitations or "_Not stated by the training job._", ""]
    return "\n".join(lines)


def log_model_card(run, *, intended_use: str = "", limitations: str = "",
                   registered_version: RegisteredVersion | None = None) -> str:
    """Generate :func:`model_card` for ``run`` and log it as ``model_card.md``; returns the text."""
    run.flush()
    client = _client(run)
    card = model_card(run.run_id, client, intended_use=intended_use, limitations=limitations,
                      registered_version=registered_version)
    client.log_text(run.run_id, card, MODEL_CARD_FILE)
    if registered_version:
        client.update_model_version(registered_version.name, registered_version.version,
                                    description=card[:4000])
    return card
