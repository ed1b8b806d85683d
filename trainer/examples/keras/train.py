"""Keras example: find the one shape in each synthetic image (box + class), tracked by cvops.

A small CNN with two heads: class probabilities and a box (x1, y1, x2, y2 as fractions of the
image). Trained from random initialisation on the data of ``make_shapes.py --max-objects 1``;
about a minute on two CPU cores. The cvops callback logs params, per-epoch and per-step
metrics, sample predictions, the COCO-style evaluation on the validation split and the model,
registered as ``--model-name``. Inside ``cvops submit`` the run is the pre-created one
(MLFLOW_RUN_ID); run directly, it is a new run (or untracked without MLFLOW_TRACKING_URI).

    python train.py --data /data/shapes --epochs 25
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def load_split(data: Path, split: str):
    """Images (N, S, S, 3) uint8, class ids (N,), boxes (N, 4) as fractions, class names."""
    from PIL import Image

    coco = json.loads((data / "annotations" / f"{split}.json").read_text())
    by_image: dict[int, list[dict]] = {}
    for annotation in coco["annotations"]:
        by_image.setdefault(annotation["image_id"], []).append(annotation)
    images, labels, boxes = [], [], []
    for record in coco["images"]:
        found = by_image.get(record["id"], [])
        if len(found) != 1:
            raise SystemExit(
                f"{split}: image {record['file_name']} has {len(found)} boxes; this model finds exactly one "
                "(generate the data with make_shapes.py --max-objects 1)"
            )
        x, y, w, h = found[0]["bbox"]
        width, height = record["width"], record["height"]
        images.append(np.asarray(Image.open(data / "images" / record["file_name"]).convert("RGB")))
        labels.append(found[0]["category_id"] - 1)
        boxes.append([x / width, y / height, (x + w) / width, (y + h) / height])
    names = [c["name"] for c in sorted(coco["categories"], key=lambda c: c["id"])]
    return np.stack(images), np.asarray(labels, np.int32), np.asarray(boxes, np.float32), names


def build_model(size: int, num_classes: int):
    import keras
    from keras import layers

    inputs = keras.Input((size, size, 3), name="image")
    x = layers.Rescaling(1 / 255.0)(inputs)
    for filters in (16, 32, 64, 96):
        x = layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
        x = layers.MaxPooling2D()(x)
    # Flatten, not global pooling: the box head needs to know *where* the features are.
    x = layers.Flatten()(x)
    x = layers.Dense(128, activation="relu")(x)
    outputs = {
        "class": layers.Dense(num_classes, activation="softmax", name="class")(x),
        "box": layers.Dense(4, activation="sigmoid", name="box")(x),
    }
    return keras.Model(inputs, outputs, name="shape_finder")


def decoder(size: int):
    from cvops.evaluation import Detections

    def decode(outputs) -> list:
        probabilities, boxes = np.asarray(outputs["class"]), np.asarray(outputs["box"]) * size
        return [
            Detections(boxes[i : i + 1], probabilities[i].argmax(keepdims=True), probabilities[i].max(keepdims=True))
            for i in range(len(boxes))
        ]

    return decode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("/data/shapes"))
    parser.add_argument("--epochs", type=int, default=25)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--model-name", default="shapes-keras", help="registered model name (empty: not registered)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import keras

    import cvops
    import cvops.sweeps
    from cvops.evaluation import Detections, evaluate_detections
    from cvops.integrations.keras import CvopsCallback

    # As a trial of `cvops sweep` (sweep.yaml), the trial's values replace these flags.
    params = cvops.sweeps.trial_params({"learning_rate": args.learning_rate, "batch_size": args.batch_size})

    keras.utils.set_random_seed(args.seed)
    train_x, train_y, train_boxes, class_names = load_split(args.data, "train")
    val_x, val_y, val_boxes, _ = load_split(args.data, "val")
    size = train_x.shape[1]
    model = build_model(size, len(class_names))
    model.compile(
        optimizer=keras.optimizers.Adam(params["learning_rate"]),
        loss={"class": "sparse_categorical_crossentropy", "box": "huber"},
        # Box errors are fractions of the image (small numbers): weight them up against the class loss.
        loss_weights={"class": 1.0, "box": 20.0},
        metrics={"class": ["accuracy"]},
    )
    ground_truth = [Detections(val_boxes[i : i + 1] * size, val_y[i : i + 1]) for i in range(len(val_y))]
    with cvops.start_run(tags={"task": "detection", "dataset": args.data.name}, seed=args.seed) as run:
        run.log_params({"data": str(args.data), "image_size": size, "train_images": len(train_x)})
        run.log_dataset(str(args.data / "annotations" / "train.json"), name=f"{args.data.name}-train")
        callback = CvopsCallback(
            run,
            log_every_n_steps=5,
            registered_model_name=args.model_name or None,
            sample_images=val_x[:4],
            decode_predictions=decoder(size),
            class_names=class_names,
            evaluation_data=(val_x, ground_truth),
        )
        model.fit(
            train_x,
            {"class": train_y, "box": train_boxes},
            validation_data=(val_x, {"class": val_y, "box": val_boxes}),
            epochs=args.epochs,
            batch_size=params["batch_size"],
            callbacks=[callback],
            verbose=2,
        )
    final = evaluate_detections(decoder(size)(model.predict(val_x, verbose=0)), ground_truth, class_names)
    print(f"validation: mAP {100 * final.map:.1f}, AP50 {100 * final.map50:.1f}, AP75 {100 * final.map75:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
