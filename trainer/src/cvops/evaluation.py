"""Detection evaluation artifacts shared by every framework adapter.

From predictions and ground truth (boxes, classes, scores per image) this computes COCO-style
per-class average precision, precision-recall curves, a confusion matrix and annotated sample
images, and measures inference latency around a user-supplied predict function. The adapters
(Detectron2, Keras, TF OD API) and users call :func:`log_detection_evaluation` and
:func:`log_latency` so every framework produces the same evaluation record.

numpy is the only import at module load; matplotlib (Agg) and PIL are imported when drawing.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

log = logging.getLogger("cvops")

# COCO's IoU thresholds (0.50:0.05:0.95) and 101-point recall grid, so "AP" here means what
# pycocotools and Detectron2's COCOEvaluator report (without crowd/area handling), with one
# difference, on purpose: a class with ground truth and no detections has AP 0 (its recall is
# 0), where pycocotools reports -1 and Detectron2 NaN. So eval/mAP of a model that detected
# nothing is 0.0, and NaN means only that the evaluation set has no ground truth at all.
COCO_IOU_THRESHOLDS = tuple(np.round(np.linspace(0.5, 0.95, 10), 2))
_RECALL_GRID = np.linspace(0.0, 1.0, 101)


@dataclass(frozen=True)
class Detections:
    """Boxes of one image: ``boxes`` (N, 4) as x1, y1, x2, y2 in pixels, ``classes`` (N,) class
    indices into ``class_names``, ``scores`` (N,) confidences (None for ground truth)."""

    boxes: np.ndarray
    classes: np.ndarray
    scores: np.ndarray | None = None

    def __post_init__(self) -> None:
        boxes = np.asarray(self.boxes, dtype=np.float64).reshape(-1, 4)
        classes = np.asarray(self.classes, dtype=np.int64).reshape(-1)
        if len(classes) != len(boxes):
            raise ValueError(f"Detections: {len(boxes)} boxes but {len(classes)} classes")
        object.__setattr__(self, "boxes", boxes)
        object.__setattr__(self, "classes", classes)
        if self.scores is not None:
            scores = np.asarray(self.scores, dtype=np.float64).reshape(-1)
            if len(scores) != len(boxes):
                raise ValueError(f"Detections: {len(boxes)} boxes but {len(scores)} scores")
            object.__setattr__(self, "scores", scores)


@dataclass(frozen=True)
class ClassEvaluation:
    name: str
    ap: float  # mean over COCO IoU thresholds, 0-1; NaN when the class has no ground truth
    ap50: float
    ap75: float
    num_ground_truth: int
    num_predictions: int
    precision: np.ndarray = field(repr=False)  # PR curve at IoU 0.5, predictions sorted by score
    recall: np.ndarray = field(repr=False)


@dataclass(frozen=True)
class DetectionEvaluation:
    classes: list[ClassEvaluation]
    confusion_matrix: np.ndarray  # (C+1, C+1): rows ground truth, columns predicted; last = background
    class_names: list[str]

    @property
    def map(self) -> float:
        return _nanmean([c.ap for c in self.classes])

    @property
    def map50(self) -> float:
        return _nanmean([c.ap50 for c in self.classes])

    @property
    def map75(self) -> float:
        return _nanmean([c.ap75 for c in self.classes])

    def per_class_table(self) -> list[dict[str, Any]]:
        return [
            {
                "class": c.name,
                "AP": c.ap,
                "AP50": c.ap50,
                "AP75": c.ap75,
                "ground_truth": c.num_ground_truth,
                "predictions": c.num_predictions,
            }
            for c in self.classes
        ]


def _nanmean(values: Sequence[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else float("nan")


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix (len(a), len(b)) of x1, y1, x2, y2 boxes."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    top_left = np.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = np.minimum(a[:, None, 2:], b[None, :, 2:])
    intersection = np.prod(np.clip(bottom_right - top_left, 0, None), axis=2)
    area_a = np.prod(np.clip(a[:, 2:] - a[:, :2], 0, None), axis=1)
    area_b = np.prod(np.clip(b[:, 2:] - b[:, :2], 0, None), axis=1)
    union = area_a[:, None] + area_b[None, :] - intersection
    return np.divide(intersection, union, out=np.zeros_like(intersection), where=union > 0)


def _match_class(
    predictions: Sequence[Detections], ground_truth: Sequence[Detections], class_id: int, iou_threshold: float
) -> tuple[np.ndarray, np.ndarray, int]:
    """Greedy COCO matching for one class: returns (scores, is_true_positive, num_ground_truth)."""
    scores, hits, num_gt = [], [], 0
    for pred, gt in zip(predictions, ground_truth):
        gt_boxes = gt.boxes[gt.classes == class_id]
        num_gt += len(gt_boxes)
        keep = pred.classes == class_id
        pred_boxes, pred_scores = pred.boxes[keep], pred.scores[keep]
        order = np.argsort(-pred_scores, kind="stable")
        ious = box_iou(pred_boxes[order], gt_boxes)
        taken = np.zeros(len(gt_boxes), dtype=bool)
        for row, score in zip(ious, pred_scores[order]):
            candidates = np.where(taken, -1.0, row)
            best = int(np.argmax(candidates)) if len(candidates) else -1
            matched = best >= 0 and candidates[best] >= iou_threshold
            if matched:
                taken[best] = True
            scores.append(score)
            hits.append(matched)
    return np.asarray(scores, dtype=np.float64), np.asarray(hits, dtype=bool), num_gt


def _precision_recall(scores: np.ndarray, hits: np.ndarray, num_gt: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(-scores, kind="stable")
    true_positives = np.cumsum(hits[order])
    false_positives = np.cumsum(~hits[order])
    precision = true_positives / np.maximum(true_positives + false_positives, 1)
    recall = true_positives / num_gt if num_gt else np.zeros_like(precision, dtype=np.float64)
    return precision, recall


def _interpolated_ap(precision: np.ndarray, recall: np.ndarray) -> float:
    """COCO's 101-point interpolated AP: the precision envelope sampled at fixed recalls."""
    if len(precision) == 0:
        return 0.0
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    positions = np.searchsorted(recall, _RECALL_GRID, side="left")
    sampled = np.where(positions < len(envelope), envelope[np.minimum(positions, len(envelope) - 1)], 0.0)
    return float(np.mean(sampled))


def _confusion_matrix(
    predictions: Sequence[Detections],
    ground_truth: Sequence[Detections],
    num_classes: int,
    iou_threshold: float,
    score_threshold: float,
) -> np.ndarray:
    background = num_classes
    matrix = np.zeros((num_classes + 1, num_classes + 1), dtype=np.int64)
    for pred, gt in zip(predictions, ground_truth):
        keep = pred.scores >= score_threshold
        pred_boxes, pred_classes = pred.boxes[keep], pred.classes[keep]
        ious = box_iou(gt.boxes, pred_boxes)
        gt_done = np.zeros(len(gt.boxes), dtype=bool)
        pred_done = np.zeros(len(pred_boxes), dtype=bool)
        # Pair boxes by descending IoU regardless of class, so a right box with a wrong label
        # shows up off the diagonal instead of as a miss plus a false alarm.
        for flat in np.argsort(-ious, axis=None, kind="stable"):
            g, p = np.unravel_index(flat, ious.shape)
            if ious[g, p] < iou_threshold:
                break
            if gt_done[g] or pred_done[p]:
                continue
            gt_done[g] = pred_done[p] = True
            matrix[gt.classes[g], pred_classes[p]] += 1
        for g in np.flatnonzero(~gt_done):
            matrix[gt.classes[g], background] += 1
        for p in np.flatnonzero(~pred_done):
            matrix[background, pred_classes[p]] += 1
    return matrix


def evaluate_detections(
    predictions: Sequence[Detections],
    ground_truth: Sequence[Detections],
    class_names: Sequence[str],
    *,
    confusion_iou_threshold: float = 0.5,
    confusion_score_threshold: float = 0.5,
) -> DetectionEvaluation:
    """COCO-style AP per class (IoU 0.50:0.95, AP50, AP75), PR curves at IoU 0.5 and a
    confusion matrix. ``predictions[i]`` and ``ground_truth[i]`` describe the same image."""
    if len(predictions) != len(ground_truth):
        raise ValueError(
            f"predictions has {len(predictions)} images but ground_truth has {len(ground_truth)}"
        )
    if any(p.scores is None for p in predictions):
        raise ValueError("predictions: every Detections needs scores")
    num_classes = len(class_names)
    for label, items in (("predictions", predictions), ("ground_truth", ground_truth)):
        for index, item in enumerate(items):
            if len(item.classes) and (item.classes.min() < 0 or item.classes.max() >= num_classes):
                raise ValueError(
                    f"{label}[{index}].classes has an index outside class_names (0..{num_classes - 1})"
                )
    classes = []
    for class_id, name in enumerate(class_names):
        aps = []
        curve = None
        for threshold in COCO_IOU_THRESHOLDS:
            scores, hits, num_gt = _match_class(predictions, ground_truth, class_id, threshold)
            precision, recall = _precision_recall(scores, hits, num_gt)
            aps.append(_interpolated_ap(precision, recall) if num_gt else float("nan"))
            if curve is None:
                curve = (precision, recall, num_gt, len(scores))
        precision, recall, num_gt, num_pred = curve
        classes.append(
            ClassEvaluation(
                name=name,
                ap=_nanmean(aps),
                ap50=aps[0],
                ap75=aps[COCO_IOU_THRESHOLDS.index(0.75)],
                num_ground_truth=num_gt,
                num_predictions=num_pred,
                precision=precision,
                recall=recall,
            )
        )
    matrix = _confusion_matrix(
        predictions, ground_truth, num_classes, confusion_iou_threshold, confusion_score_threshold
    )
    return DetectionEvaluation(classes=classes, confusion_matrix=matrix, class_names=list(class_names))


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def plot_precision_recall(evaluation: DetectionEvaluation):
    """One PR curve (IoU 0.5) per class with ground truth; returns a matplotlib Figure."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 5), dpi=100)
    for c in evaluation.classes:
        if c.num_ground_truth:
            ax.plot(c.recall, c.precision, label=f"{c.name} (AP50 {c.ap50:.2f})")
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title="Precision-recall, IoU 0.5")
    if ax.lines:
        ax.legend(loc="lower left", fontsize="small")
    fig.tight_layout()
    return fig


def plot_confusion_matrix(evaluation: DetectionEvaluation):
    plt = _pyplot()
    labels = [*evaluation.class_names, "background"]
    matrix = evaluation.confusion_matrix
    size = max(4.0, 0.5 * len(labels) + 2)
    fig, ax = plt.subplots(figsize=(size, size), dpi=100)
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set(xlabel="predicted", ylabel="ground truth", title="Confusion matrix")
    threshold = matrix.max() / 2 if matrix.size else 0
    for (row, col), count in np.ndenumerate(matrix):
        ax.text(col, row, str(count), ha="center", va="center", color="white" if count > threshold else "black")
    fig.tight_layout()
    return fig


_PALETTE = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
            (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128)]


def draw_detections(
    image: Any,
    predictions: Detections,
    class_names: Sequence[str],
    *,
    ground_truth: Detections | None = None,
    score_threshold: float = 0.3,
):
    """Draw predicted boxes (coloured by class, with score) and optional ground truth (white,
    dashed-looking thin outline) on an RGB image (HWC uint8/float array or PIL); returns PIL."""
    from PIL import ImageDraw

    canvas = to_pil_rgb(image)
    draw = ImageDraw.Draw(canvas)
    if ground_truth is not None:
        for box in ground_truth.boxes:
            draw.rectangle(_corners(box), outline=(255, 255, 255), width=1)
    scores = predictions.scores if predictions.scores is not None else np.ones(len(predictions.boxes))
    for box, class_id, score in zip(predictions.boxes, predictions.classes, scores):
        if score < score_threshold:
            continue
        colour = _PALETTE[int(class_id) % len(_PALETTE)]
        name = class_names[class_id] if 0 <= class_id < len(class_names) else str(class_id)
        x1, y1, x2, y2 = _corners(box)
        draw.rectangle([x1, y1, x2, y2], outline=colour, width=2)
        draw.text((x1 + 2, max(0.0, y1 - 11)), f"{name} {score:.2f}", fill=colour)
    return canvas


def _corners(box: np.ndarray) -> list[float]:
    # An untrained model can predict x2 < x1; draw the box it spans rather than fail.
    x1, x2 = sorted((float(box[0]), float(box[2])))
    y1, y2 = sorted((float(box[1]), float(box[3])))
    return [x1, y1, x2, y2]


def to_pil_rgb(image: Any):
    """RGB PIL image from PIL, HWC or CHW arrays (uint8, or floats in [0, 1])."""
    from PIL import Image

    if isinstance(image, Image.Image):
        return image.convert("RGB")
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[0] in (1, 3) and array.shape[-1] not in (1, 3):
        array = np.transpose(array, (1, 2, 0))  # CHW (torch, Detectron2's put_image) -> HWC
    if array.dtype != np.uint8:
        scale = 255.0 if array.size and float(np.nanmax(array)) <= 1.0 else 1.0
        array = np.clip(array * scale, 0, 255).astype(np.uint8)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    return Image.fromarray(array).convert("RGB")


@dataclass(frozen=True)
class LatencyReport:
    p50_ms_per_image: float
    p95_ms_per_image: float
    images_per_s: float
    images: int

    def as_metrics(self, prefix: str = "inference") -> dict[str, float]:
        return {
            f"{prefix}/latency_p50_ms": self.p50_ms_per_image,
            f"{prefix}/latency_p95_ms": self.p95_ms_per_image,
            f"{prefix}/images_per_s": self.images_per_s,
        }


def measure_latency(
    predict: Callable[[Any], Any],
    batches: Iterable[Any],
    *,
    images_per_batch: Callable[[Any], int] = len,
    warmup_batches: int = 1,
) -> LatencyReport:
    """Time ``predict(batch)`` over the evaluation batches (the first ``warmup_batches`` are run
    but not timed: graph tracing and allocator warm-up are not serving latency). Per-image
    latency is a batch's wall time divided by its image count; throughput is images over the
    total timed wall time."""
    per_image_ms: list[float] = []
    total_images = 0
    total_s = 0.0
    for index, batch in enumerate(batches):
        count = int(images_per_batch(batch))
        started = time.perf_counter()
        predict(batch)
        elapsed = time.perf_counter() - started
        if index < warmup_batches or count == 0:
            continue
        per_image_ms.extend([elapsed * 1000.0 / count] * count)
        total_images += count
        total_s += elapsed
    if not per_image_ms:
        raise ValueError(f"measure_latency: no batches left to time after {warmup_batches} warm-up batch(es)")
    p50, p95 = np.percentile(per_image_ms, [50, 95])
    return LatencyReport(
        p50_ms_per_image=float(p50),
        p95_ms_per_image=float(p95),
        images_per_s=total_images / total_s if total_s > 0 else float("inf"),
        images=total_images,
    )


def log_detection_evaluation(
    run: Any,
    predictions: Sequence[Detections],
    ground_truth: Sequence[Detections],
    class_names: Sequence[str],
    *,
    images: Sequence[Any] | None = None,
    max_sample_images: int = 8,
    step: int | None = None,
    prefix: str = "eval",
    artifact_dir: str = "evaluation",
) -> DetectionEvaluation:
    """Compute the evaluation and log it through a cvops Run: ``<prefix>/mAP``, ``/AP50``,
    ``/AP75`` and ``<prefix>/AP/<class>`` metrics (0-100, like COCOEvaluator), the per-class
    table (JSON and Markdown), PR-curve and confusion-matrix PNGs and annotated samples."""
    evaluation = evaluate_detections(predictions, ground_truth, class_names)
    metrics = {
        f"{prefix}/mAP": 100 * evaluation.map,
        f"{prefix}/AP50": 100 * evaluation.map50,
        f"{prefix}/AP75": 100 * evaluation.map75,
    }
    metrics.update({f"{prefix}/AP/{c.name}": 100 * c.ap for c in evaluation.classes})
    run.log_metrics(metrics, step=step)
    table = evaluation.per_class_table()
    run.log_dict({"per_class": table, "mAP": evaluation.map, "AP50": evaluation.map50}, f"{artifact_dir}/per_class_ap.json")
    run.log_text(_markdown_table(table), f"{artifact_dir}/per_class_ap.md")
    plt = _pyplot()
    for figure, name in ((plot_precision_recall(evaluation), "pr_curves.png"), (plot_confusion_matrix(evaluation), "confusion_matrix.png")):
        run.log_figure(figure, f"{artifact_dir}/{name}")
        plt.close(figure)
    run.log_dict(
        {"labels": [*evaluation.class_names, "background"], "matrix": evaluation.confusion_matrix.tolist()},
        f"{artifact_dir}/confusion_matrix.json",
    )
    for index, image in enumerate(list(images if images is not None else [])[:max_sample_images]):
        drawn = draw_detections(image, predictions[index], class_names, ground_truth=ground_truth[index])
        run.log_image(drawn, f"{artifact_dir}/samples/{index:03d}.png")
    return evaluation


def log_latency(run: Any, report: LatencyReport, *, step: int | None = None, prefix: str = "inference") -> None:
    run.log_metrics(report.as_metrics(prefix), step=step)


def evaluate_detector(
    run: Any,
    predict_batch: Callable[[Sequence[Any]], Iterable[Detections]],
    images: Sequence[Any],
    ground_truth: Sequence[Detections],
    class_names: Sequence[str],
    *,
    batch_size: int = 1,
    step: int | None = None,
) -> DetectionEvaluation:
    """What every framework adapter logs at the end of training: predict the evaluation images once,
    batch by batch, timing each batch (the first is a warm-up when there are others), then log the
    evaluation (``log_detection_evaluation``) and the latency (``log_latency``)."""
    batches = [images[start:start + batch_size] for start in range(0, len(images), batch_size)]
    predictions: list[Detections] = []
    try:
        latency = measure_latency(
            lambda batch: predictions.extend(predict_batch(batch)), batches, warmup_batches=1 if len(batches) > 1 else 0
        )
    except ValueError as nothing_timed:  # an empty evaluation set: still logged, without latency
        log.warning("cvops: no inference latency: %s", nothing_timed)
        latency = None
    evaluation = log_detection_evaluation(run, predictions, ground_truth, class_names, images=images, step=step)
    if latency is not None:
        log_latency(run, latency, step=step)
    return evaluation


def _markdown_table(rows: Sequence[Mapping[str, Any]]) -> str:
    if not rows:
        return ""
    headers = list(rows[0])
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for row in rows:
        cells = [f"{v:.4f}" if isinstance(v, float) else str(v) for v in row.values()]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- registered models

EVALUATION_EXPERIMENT = "model-evaluation"
EVALUATED_MODEL_TAG = "cvops.evaluated_model"  # on the evaluation run: models:/<name>/<version>
EVALUATED_DIGEST_TAG = "cvops.evaluation_dataset_digest"
VERSION_EVALUATION_TAG_PREFIX = "cvops.evaluation."  # on the version, + dataset digest: the run and its numbers
OUTSIDE_CLASSES_METRIC = "eval/predictions_outside_dataset_classes"


@dataclass(frozen=True)
class ModelEvaluation:
    """One registered version scored on one dataset: the evaluation run and what it logged."""

    model_name: str
    version: str
    run_id: str
    dataset_digest: str
    metrics: dict[str, float]
    evaluation: DetectionEvaluation = field(repr=False)

    @property
    def model_uri(self) -> str:
        return f"models:/{self.model_name}/{self.version}"

    def headline_metrics(self, also: Iterable[str] = ()) -> dict[str, float]:
        """mAP, AP50, AP75, the latency figures and ``also``: what fits a registry tag, where
        every per-class AP of a many-class model would not (all of them are on the run)."""
        wanted = set(also)
        return {key: value for key, value in sorted(self.metrics.items())
                if key in _HEADLINE_METRICS or key.startswith("inference/") or key in wanted}

    def record(self, also: Iterable[str] = ()) -> dict[str, Any]:
        return {"model_uri": self.model_uri, "run_id": self.run_id, "metrics": self.headline_metrics(also)}


_HEADLINE_METRICS = ("eval/mAP", "eval/AP50", "eval/AP75")


def resolve_model_uri(model_uri: str, client) -> tuple[str, str]:
    """(name, version) of ``models:/<name>/<version>`` or ``models:/<name>@<alias>``; the alias
    is resolved once, so the evaluation is of one version even if the alias moves meanwhile."""
    body = model_uri.removeprefix("models:/")
    if body == model_uri or not body:
        raise ValueError(f"{model_uri!r}: expected models:/<name>/<version> or models:/<name>@<alias>")
    if "@" in body:
        name, alias = body.rsplit("@", 1)
        return name, str(client.get_model_version_by_alias(name, alias).version)
    name, _, version = body.rpartition("/")
    if not name or not version.isdigit():
        raise ValueError(f"{model_uri!r}: expected models:/<name>/<version> (a number) or models:/<name>@<alias>")
    return name, str(client.get_model_version(name, version).version)


def evaluate_registered_model(
    model_uri: str,
    dataset: Any,
    *,
    class_names: Sequence[str] | Mapping[int, str] | None = None,
    batch_size: int = 8,
    experiment: str = EVALUATION_EXPERIMENT,
    client: Any = None,
) -> ModelEvaluation:
    """Run a registered detector of any framework (loaded through MLflow pyfunc, fed and read as
    the inference server does: cvops.detection_schema) on ``dataset`` and log the evaluation as a
    run of ``experiment``: COCO-style ``eval/mAP``, ``eval/AP50``, ``eval/AP75``, ``eval/AP/<class>``,
    the per-class table, PR curves, confusion matrix, samples and ``inference/latency_*``, with
    the dataset as an ``evaluation`` input (its digest).

    ``dataset``: a path (:func:`cvops.detection_dataset.load_detection_dataset`) or a loaded
    ``DetectionDataset``. The model's class ids are matched to the dataset's categories by name,
    through the version tag ``cvops.class_names`` (set by the framework adapters) or ``class_names``
    (a list indexed by class id, or id -> name), which wins. Predictions of classes the dataset
    does not have are left out and counted (``eval/predictions_outside_dataset_classes``).

    The run is tagged ``cvops.evaluated_model`` = ``models:/<name>/<version>``; the version gets
    the tag ``cvops.evaluation.<digest>`` with the run id and the headline numbers.
    """
    import json

    from mlflow import MlflowClient

    import cvops
    from cvops.detection_dataset import DetectionDataset, class_index, load_detection_dataset
    from cvops.detection_schema import CLASS_NAMES_TAG, InputFormat, class_names_from_tag, model_predict, read_output
    from cvops.registry import load_registered_version

    client = client or MlflowClient()
    name, version = resolve_model_uri(model_uri, client)
    data = dataset if isinstance(dataset, DetectionDataset) else load_detection_dataset(dataset)
    if class_names is not None:
        model_classes = dict(class_names.items()) if isinstance(class_names, Mapping) else dict(enumerate(class_names))
    else:
        model_classes = class_names_from_tag(client.get_model_version(name, version).tags.get(CLASS_NAMES_TAG))
        if not model_classes:
            raise ValueError(
                f"models:/{name}/{version} has no {CLASS_NAMES_TAG} tag naming its classes (cvops' framework adapters "
                f"set it when they register); pass class_names= (--class-names), index = class id"
            )
    to_dataset_class = class_index(model_classes, data.class_names)
    images = data.load_images()
    model, model_files = load_registered_version(name, version)
    input_format = InputFormat.of(model)
    run_model = model_predict(model)
    outside = 0

    def predict_batch(batch: Sequence[np.ndarray]) -> list[Detections]:
        nonlocal outside
        found = []
        for image_detections in read_output(run_model(input_format.model_input(batch)), batch, input_format):
            known = np.array([c in to_dataset_class for c in image_detections.class_ids.tolist()], dtype=bool)
            outside += int((~known).sum())
            found.append(Detections(
                image_detections.boxes[known],
                [to_dataset_class[c] for c in image_detections.class_ids[known].tolist()],
                image_detections.scores[known],
            ))
        return found

    evaluated = f"models:/{name}/{version}"
    tags = {EVALUATED_MODEL_TAG: evaluated, "task": "evaluation"}
    with model_files, cvops.start_run(experiment=experiment, run_name=f"evaluate {name} v{version}", tags=tags) as run:
        if not run.enabled:
            raise RuntimeError("evaluate_registered_model logs an evaluation run: set MLFLOW_TRACKING_URI")
        digest = run.log_dataset(data.root, name=data.annotations.stem, context="evaluation", files=data.files)
        run.set_tags({EVALUATED_DIGEST_TAG: digest})
        run.log_params({"model_uri": evaluated, "dataset": str(data.annotations), "batch_size": batch_size,
                        "images": len(images)})
        result = evaluate_detector(run, predict_batch, images, data.ground_truth, data.class_names,
                                   batch_size=batch_size)
        run.log_metrics({OUTSIDE_CLASSES_METRIC: outside})
        run.flush()
        run_id = run.run_id
    evaluated_version = ModelEvaluation(name, version, run_id, digest, dict(client.get_run(run_id).data.metrics), result)
    client.set_model_version_tag(name, version, VERSION_EVALUATION_TAG_PREFIX + digest,
                                 json.dumps({"run_id": run_id, **evaluated_version.headline_metrics()}))
    return evaluated_version
