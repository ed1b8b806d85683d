"""Stands in for the TF Object Detection API's model_main_tf2.py in the cvops tests.

The OD API is not installable here (it needs TF <= 2.15 and packages that are not on PyPI). This
script takes the same command line and leaves the same things on disk, written with real
TensorFlow: training writes `Loss/*`, `learning_rate` and `steps_per_sec` scalars
(tf.summary, i.e. tensors with plugin "scalars") to model_dir/train and saves `ckpt-N` through
tf.train.CheckpointManager with `step` in the checkpoint, as model_lib_v2.train_loop does; with
--checkpoint_dir it evaluates each new checkpoint like model_lib_v2.eval_continuously, writing
COCO `DetectionBoxes_*` scalars and `eval_side_by_side_*` images to model_dir/eval. Losses and
metrics are made-up numbers that move the way training curves do; there is no model.
"""
import argparse
import os
import time

import numpy as np
import tensorflow as tf

parser = argparse.ArgumentParser()
parser.add_argument("--model_dir", required=True)
parser.add_argument("--pipeline_config_path", required=True)
parser.add_argument("--checkpoint_dir")
parser.add_argument("--eval_timeout", type=int, default=3600)
parser.add_argument("--num_train_steps", type=int, default=300)
parser.add_argument("--checkpoint_every_n", type=int, default=100)
parser.add_argument("--fail_at_step", type=int, default=0)
args = parser.parse_args()


def train():
    step = tf.Variable(0, dtype=tf.int64)
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(step=step), args.model_dir, max_to_keep=7)
    writer = tf.summary.create_file_writer(os.path.join(args.model_dir, "train"))
    with writer.as_default():
        while int(step) < args.num_train_steps:
            step.assign_add(args.checkpoint_every_n // 2)
            s = int(step)
            if s == args.fail_at_step:
                raise SystemExit("standin: simulated training failure")
            decay = 1.0 / (1 + s / 100)
            for tag, value in {
                "Loss/RPNLoss/localization_loss": 0.3 * decay,
                "Loss/RPNLoss/objectness_loss": 0.2 * decay,
                "Loss/BoxClassifierLoss/localization_loss": 0.5 * decay,
                "Loss/BoxClassifierLoss/classification_loss": 0.4 * decay,
                "Loss/regularization_loss": 0.01,
                "Loss/total_loss": 1.41 * decay,
                "learning_rate": 0.04 * decay,
                "steps_per_sec": 2.5,
            }.items():
                tf.summary.scalar(tag, value, step=s)
            writer.flush()
            if s % args.checkpoint_every_n == 0:
                manager.save()
            time.sleep(0.5)


def evaluate():
    writer = tf.summary.create_file_writer(os.path.join(args.model_dir, "eval"))
    for path in tf.train.checkpoints_iterator(args.checkpoint_dir, min_interval_secs=0, timeout=args.eval_timeout):
        step = tf.Variable(0, dtype=tf.int64)
        tf.train.Checkpoint(step=step).restore(path).expect_partial()
        s = int(step)
        quality = s / (s + 200)
        side_by_side = np.zeros((1, 24, 48, 3), np.uint8)
        side_by_side[0, 4:20, 4:20, 0] = 255
        side_by_side[0, 4:20, 28:44, 1] = 255
        with writer.as_default():
            for tag, value in {
                "DetectionBoxes_Precision/mAP": quality,
                "DetectionBoxes_Precision/mAP@.50IOU": min(1.0, quality * 1.6),
                "DetectionBoxes_Precision/mAP (small)": quality / 3,
                "DetectionBoxes_Recall/AR@100": quality * 1.2,
                "DetectionBoxes_PerformanceByCategory/mAP/car": quality * 1.1,
                "Loss/total_loss": 1.5 / (1 + s / 100),
            }.items():
                tf.summary.scalar(tag, value, step=s)
            tf.summary.image("eval_side_by_side_0_0", side_by_side, step=s)
        writer.flush()
        if s >= args.num_train_steps:
            return


if args.checkpoint_dir:
    evaluate()
else:
    train()
