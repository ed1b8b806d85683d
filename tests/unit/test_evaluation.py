"""cvops.evaluation: COCO-style AP, PR curves, confusion matrix, drawings and latency, on hand-built
detections whose right answers are worked out in the comments."""
import math

import numpy as np
import pytest

from cvops.evaluation import (
    Detections,
    box_iou,
    draw_detections,
    evaluate_detections,
    measure_latency,
    plot_confusion_matrix,
    plot_precision_recall,
)

CLASSES = ["car", "person", "bike"]


def test_iou_of_identical_disjoint_and_half_overlapping_boxes():
    iou = box_iou([[0, 0, 10, 10]], [[0, 0, 10, 10], [20, 20, 30, 30], [5, 0, 15, 10]])
    assert iou[0].tolist() == pytest.approx([1.0, 0.0, 50 / 150])


def test_perfect_predictions_score_ap_one_and_a_diagonal_confusion_matrix():
    gt = [Detections([[0, 0, 10, 10], [20, 20, 40, 40]], [0, 1]), Detections([[5, 5, 25, 25]], [1])]
    pred = [Detections(g.boxes, g.classes, np.full(len(g.classes), 0.9)) for g in gt]
    result = evaluate_detections(pred, gt, CLASSES)
    car, person, bike = result.classes
    assert (car.ap, person.ap, car.ap50, person.ap75) == (1.0, 1.0, 1.0, 1.0)
    # bike has no ground truth: its AP is undefined and stays out of the mean, as in COCO.
    assert math.isnan(bike.ap)
    assert result.map == 1.0
    assert np.array_equal(np.diag(result.confusion_matrix)[:2], [1, 2])
    assert result.confusion_matrix.sum() == 3


def test_a_model_that_detects_nothing_scores_zero_not_nan():
    # COCO tools report NaN (Detectron2) or -1 (pycocotools) here; cvops' definition is 0: the
    # classes with ground truth were all missed. NaN stays for "no ground truth to score against".
    gt = [Detections([[0, 0, 10, 10]], [0]), Detections([[5, 5, 25, 25]], [1])]
    nothing = [Detections(np.zeros((0, 4)), [], []) for _ in gt]
    result = evaluate_detections(nothing, gt, CLASSES)
    assert (result.map, result.map50, result.classes[0].ap) == (0.0, 0.0, 0.0)
    no_ground_truth = evaluate_detections(nothing, [Detections(np.zeros((0, 4)), []) for _ in gt], CLASSES)
    assert math.isnan(no_ground_truth.map)


def test_ap_uses_the_101_point_interpolated_precision_envelope():
    # Two cars; predictions by score: hit (0.9), false alarm (0.8), hit (0.7).
    # precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1 -> envelope 1 up to recall 0.5 (51 grid points)
    # then 2/3 (50 points): AP = (51 + 50 * 2/3) / 101.
    gt = [Detections([[0, 0, 10, 10], [50, 50, 60, 60]], [0, 0])]
    pred = [Detections([[0, 0, 10, 10], [80, 80, 90, 90], [50, 50, 60, 60]], [0, 0, 0], [0.9, 0.8, 0.7])]
    car = evaluate_detections(pred, gt, CLASSES).classes[0]
    assert car.ap50 == pytest.approx((51 + 50 * 2 / 3) / 101)
    assert car.precision.tolist() == pytest.approx([1.0, 0.5, 2 / 3])
    assert car.recall.tolist() == pytest.approx([0.5, 0.5, 1.0])
    assert (car.num_ground_truth, car.num_predictions) == (2, 3)


def test_loose_box_counts_at_iou_half_but_not_at_stricter_thresholds():
    # IoU of the prediction with the ground truth is 0.62: a hit for IoU 0.50, 0.55 and 0.60 of
    # COCO's ten thresholds, a miss above.
    gt = [Detections([[0, 0, 10, 10]], [0])]
    pred = [Detections([[0, 0, 10, 6.2]], [0], [0.9])]
    car = evaluate_detections(pred, gt, CLASSES).classes[0]
    assert car.ap50 == 1.0 and car.ap75 == 0.0
    assert car.ap == pytest.approx(3 / 10)


def test_one_prediction_cannot_match_two_ground_truth_boxes():
    gt = [Detections([[0, 0, 10, 10], [0, 0, 10, 10]], [0, 0])]
    pred = [Detections([[0, 0, 10, 10]], [0], [0.9])]
    car = evaluate_detections(pred, gt, CLASSES).classes[0]
    assert car.recall.tolist() == [0.5]
    assert car.ap50 == pytest.approx(51 / 101)


def test_confusion_matrix_puts_wrong_labels_off_diagonal_and_misses_in_background():
    gt = [Detections([[0, 0, 10, 10], [50, 50, 60, 60]], [0, 1])]
    # A right box labelled "bike", a false alarm, and a low-score box below the 0.5 threshold.
    pred = [Detections([[0, 0, 10, 10], [100, 100, 110, 110], [50, 50, 60, 60]], [2, 1, 1], [0.9, 0.8, 0.1])]
    matrix = evaluate_detections(pred, gt, CLASSES).confusion_matrix
    background = 3
    assert matrix[0, 2] == 1  # car seen as bike
    assert matrix[1, background] == 1  # person missed (its only prediction is under threshold)
    assert matrix[background, 1] == 1  # false-alarm person
    assert matrix.sum() == 3


def test_bad_input_names_the_field():
    with pytest.raises(ValueError, match="predictions has 1 images but ground_truth has 2"):
        evaluate_detections([Detections([], [], [])], [Detections([], []), Detections([], [])], CLASSES)
    with pytest.raises(ValueError, match=r"predictions\[0\].classes"):
        evaluate_detections([Detections([[0, 0, 1, 1]], [7], [0.5])], [Detections([], [])], CLASSES)
    with pytest.raises(ValueError, match="scores"):
        evaluate_detections([Detections([[0, 0, 1, 1]], [0])], [Detections([], [])], CLASSES)
    with pytest.raises(ValueError, match="2 boxes but 1 classes"):
        Detections([[0, 0, 1, 1], [0, 0, 2, 2]], [0])


def test_figures_and_drawings_render_to_pixels():
    pytest.importorskip("matplotlib")
    pytest.importorskip("PIL")
    gt = [Detections([[2, 2, 20, 20]], [0])]
    pred = [Detections([[3, 3, 19, 19]], [0], [0.8])]
    result = evaluate_detections(pred, gt, CLASSES)
    for figure in (plot_precision_recall(result), plot_confusion_matrix(result)):
        figure.canvas.draw()
        assert np.asarray(figure.canvas.buffer_rgba()).std() > 0
    # Detectron2's put_image hands CHW floats in [0, 1]; Keras hands HWC arrays.
    for image in (np.zeros((3, 32, 32), np.float32), np.zeros((32, 32, 3), np.uint8)):
        drawn = np.asarray(draw_detections(image, pred[0], CLASSES, ground_truth=gt[0]))
        assert drawn.shape == (32, 32, 3)
        assert drawn[3, 10].tolist() == [230, 25, 75]  # the car colour on the predicted box's top edge
        assert drawn[2, 10].tolist() == [255, 255, 255]  # ground truth outline
    # Early in training a model predicts corners the wrong way round: still drawn, not an error.
    inverted = Detections([[19, 19, 3, 3]], [0], [0.8])
    assert np.asarray(draw_detections(np.zeros((32, 32, 3), np.uint8), inverted, CLASSES))[3, 10].tolist() == [230, 25, 75]


def test_latency_skips_warmup_and_reports_per_image_quantiles():
    calls = []
    batches = [np.zeros((4, 8, 8, 3))] * 5
    report = measure_latency(calls.append, batches, warmup_batches=1)
    assert len(calls) == 5 and report.images == 16
    assert 0 <= report.p50_ms_per_image <= report.p95_ms_per_image
    assert report.images_per_s > 0
    assert set(report.as_metrics()) == {
        "inference/latency_p50_ms",
        "inference/latency_p95_ms",
        "inference/images_per_s",
    }
    with pytest.raises(ValueError, match="no batches left"):
        measure_latency(calls.append, batches[:1], warmup_batches=1)
