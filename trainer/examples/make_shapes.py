"""Synthetic detection data: coloured circles, squares and triangles on noisy backgrounds.

Generated, never downloaded, deterministic for a seed. Writes, under OUT:

    images/{train,val}/000000.png        the pictures
    annotations/{train,val}.json         COCO detection format (bbox = x, y, width, height)
    tfrecord/{train,val}.record          TF Object Detection API tf.Example records (needs TensorFlow)
    label_map.pbtxt                      the OD API label map

    python trainer/examples/make_shapes.py /data/shapes --train 300 --val 100 --size 64 --max-objects 1

Only numpy and Pillow are needed (``pip install './trainer[examples]'``); TFRecords are written when TensorFlow is importable
(``--tfrecord required`` makes its absence an error, ``off`` skips them).
"""
from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

import numpy as np

CLASSES = ("circle", "square", "triangle")


def _draw_shape(draw, kind: str, box: tuple[int, int, int, int], colour: tuple[int, int, int]) -> None:
    x1, y1, x2, y2 = box
    if kind == "circle":
        draw.ellipse(box, fill=colour)
    elif kind == "square":
        draw.rectangle((x1, y1, x2 - 1, y2 - 1), fill=colour)
    else:
        draw.polygon([((x1 + x2) / 2, y1), (x2 - 1, y2 - 1), (x1, y2 - 1)], fill=colour)


def _overlaps(box, boxes) -> bool:
    x1, y1, x2, y2 = box
    return any(x1 < bx2 and bx1 < x2 and y1 < by2 and by1 < y2 for bx1, by1, bx2, by2 in boxes)


def make_image(rng: np.random.Generator, size: int, max_objects: int):
    """One picture and its objects: list of (class index, (x1, y1, x2, y2) in pixels)."""
    from PIL import Image, ImageDraw

    background = rng.integers(150, 256, size=3)
    noise = rng.normal(0, 12, size=(size, size, 3))
    pixels = np.clip(background + noise, 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels, "RGB")
    draw = ImageDraw.Draw(image)
    objects: list[tuple[int, tuple[int, int, int, int]]] = []
    for _ in range(int(rng.integers(1, max_objects + 1))):
        for _attempt in range(20):
            side = int(rng.integers(size // 5, size // 2 + 1))
            x1, y1 = (int(v) for v in rng.integers(0, size - side + 1, size=2))
            box = (x1, y1, x1 + side, y1 + side)
            if not _overlaps(box, [b for _, b in objects]):
                break
        else:
            continue
        label = int(rng.integers(len(CLASSES)))
        colour = tuple(int(c) for c in rng.integers(0, 120, size=3))  # dark on a light background
        _draw_shape(draw, CLASSES[label], box, colour)
        objects.append((label, box))
    return image, objects


def _tf_example(tf, png: bytes, name: str, size: int, objects):
    def floats(values):
        return tf.train.Feature(float_list=tf.train.FloatList(value=values))

    def ints(values):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=values))

    def raw(values):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=values))

    boxes = [box for _, box in objects]
    feature = {
        "image/height": ints([size]),
        "image/width": ints([size]),
        "image/filename": raw([name.encode()]),
        "image/source_id": raw([name.encode()]),
        "image/encoded": raw([png]),
        "image/format": raw([b"png"]),
        "image/object/bbox/xmin": floats([b[0] / size for b in boxes]),
        "image/object/bbox/ymin": floats([b[1] / size for b in boxes]),
        "image/object/bbox/xmax": floats([b[2] / size for b in boxes]),
        "image/object/bbox/ymax": floats([b[3] / size for b in boxes]),
        "image/object/class/text": raw([CLASSES[label].encode() for label, _ in objects]),
        # The OD API's label ids start at 1 (0 is background).
        "image/object/class/label": ints([label + 1 for label, _ in objects]),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature))


def write_split(out: Path, split: str, count: int, size: int, max_objects: int, rng, tf) -> dict:
    image_dir = out / "images" / split
    image_dir.mkdir(parents=True, exist_ok=True)
    coco = {
        "info": {"description": f"cvops synthetic shapes, {split}"},
        "images": [],
        "annotations": [],
        "categories": [{"id": i + 1, "name": name, "supercategory": "shape"} for i, name in enumerate(CLASSES)],
    }
    writer = None
    if tf is not None:
        (out / "tfrecord").mkdir(parents=True, exist_ok=True)
        writer = tf.io.TFRecordWriter(str(out / "tfrecord" / f"{split}.record"))
    try:
        for index in range(count):
            image, objects = make_image(rng, size, max_objects)
            name = f"{index:06d}.png"
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            (image_dir / name).write_bytes(buffer.getvalue())
            coco["images"].append({"id": index, "file_name": f"{split}/{name}", "width": size, "height": size})
            for label, (x1, y1, x2, y2) in objects:
                coco["annotations"].append(
                    {
                        "id": len(coco["annotations"]) + 1,
                        "image_id": index,
                        "category_id": label + 1,
                        "bbox": [x1, y1, x2 - x1, y2 - y1],
                        "area": (x2 - x1) * (y2 - y1),
                        "iscrowd": 0,
                    }
                )
            if writer is not None:
                writer.write(_tf_example(tf, buffer.getvalue(), name, size, objects).SerializeToString())
    finally:
        if writer is not None:
            writer.close()
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    (out / "annotations" / f"{split}.json").write_text(json.dumps(coco))
    return coco


def label_map() -> str:
    return "".join(f"item {{\n  id: {i + 1}\n  name: '{name}'\n}}\n" for i, name in enumerate(CLASSES))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="output folder (created)")
    parser.add_argument("--train", type=int, default=300, help="training images (default 300)")
    parser.add_argument("--val", type=int, default=100, help="validation images (default 100)")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels (default 64)")
    parser.add_argument("--max-objects", type=int, default=1, help="objects per image, 1..N (default 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tfrecord", choices=("auto", "required", "off"), default="auto")
    args = parser.parse_args(argv)
    if args.size < 32 or args.max_objects < 1 or args.train < 1 or args.val < 1:
        parser.error("--size must be >= 32; --max-objects, --train and --val >= 1")
    tf = None
    if args.tfrecord != "off":
        try:
            import tensorflow as tf
        except ImportError:
            if args.tfrecord == "required":
                parser.error("--tfrecord required but TensorFlow is not installed")
            print("TensorFlow not installed: writing COCO JSON only (no TFRecords)", file=sys.stderr)
    rng = np.random.default_rng(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    for split, count in (("train", args.train), ("val", args.val)):
        coco = write_split(args.out, split, count, args.size, args.max_objects, rng, tf)
        print(f"{split}: {len(coco['images'])} images, {len(coco['annotations'])} boxes")
    (args.out / "label_map.pbtxt").write_text(label_map())
    return 0


if __name__ == "__main__":
    sys.exit(main())
