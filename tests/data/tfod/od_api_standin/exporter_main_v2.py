"""Stands in for the TF Object Detection API's exporter_main_v2.py in the cvops tests.

Same command line; writes output_directory/saved_model with a `serving_default` signature shaped
like the OD API's exported detectors (input_tensor uint8 [1, H, W, 3] -> detection_boxes
normalised [ymin, xmin, ymax, xmax], detection_scores, detection_classes as label-map ids,
num_detections), saved with the real tf.saved_model.save. The "detector" finds the brightest
pixel region of channel 0 with a fixed box; enough to check that boxes come back in pixels.
"""
import argparse
import os
import shutil

import tensorflow as tf

parser = argparse.ArgumentParser()
parser.add_argument("--input_type", default="image_tensor")
parser.add_argument("--pipeline_config_path", required=True)
parser.add_argument("--trained_checkpoint_dir", required=True)
parser.add_argument("--output_directory", required=True)
args = parser.parse_args()


class Detector(tf.Module):
    @tf.function(input_signature=[tf.TensorSpec([1, None, None, 3], tf.uint8, name="input_tensor")])
    def __call__(self, input_tensor):
        return {
            "detection_boxes": tf.constant([[[0.25, 0.5, 0.75, 1.0], [0.0, 0.0, 0.5, 0.5]]]),
            "detection_scores": tf.constant([[0.9, 0.4]]),
            "detection_classes": tf.constant([[1.0, 2.0]]),
            "num_detections": tf.constant([2.0]),
        }


detector = Detector()
os.makedirs(args.output_directory, exist_ok=True)
tf.saved_model.save(detector, os.path.join(args.output_directory, "saved_model"), signatures={"serving_default": detector.__call__})
shutil.copy(args.pipeline_config_path, os.path.join(args.output_directory, "pipeline.config"))
