"""cvops.integrations.pipeline_config: the OD API's pipeline.config (protobuf text format) read
without the OD API protos. Test data: tests/data/tfod/*.config, laid out like the TF2 Detection
Zoo configs."""
from pathlib import Path

import pytest

from cvops.integrations.pipeline_config import (
    PipelineConfigError,
    flatten,
    parse_text_proto,
    read_pipeline_config,
    summarize,
)

DATA = Path(__file__).resolve().parents[1] / "data" / "tfod"


def test_faster_rcnn_summary_has_what_runs_are_compared_by():
    params = summarize(read_pipeline_config(DATA / "faster_rcnn_resnet50_v1_640x640.config"))
    assert params["meta_architecture"] == "faster_rcnn"
    assert params["num_classes"] == 3
    assert params["image_resizer"] == "keep_aspect_ratio_resizer"
    assert params["image_resizer.max_dimension"] == 640
    assert params["feature_extractor"] == "faster_rcnn_resnet50_keras"
    assert (params["batch_size"], params["num_steps"]) == (8, 25000)
    assert params["optimizer"] == "momentum_optimizer"
    assert params["optimizer.momentum_optimizer_value"] == 0.9
    assert params["optimizer.use_moving_average"] is False
    assert params["learning_rate_schedule"] == "cosine_decay_learning_rate"
    assert params["learning_rate.learning_rate_base"] == 0.04
    assert params["learning_rate.warmup_steps"] == 2000
    assert params["fine_tune_checkpoint"] == "/models/resnet50_v1/checkpoint/ckpt-0"
    assert params["data_augmentation_options"] == "random_horizontal_flip,random_adjust_hue"


def test_ssd_summary():
    params = summarize(read_pipeline_config(DATA / "ssd_mobilenet_v2_320x320.config"))
    assert params["meta_architecture"] == "ssd"
    assert params["image_resizer"] == "fixed_shape_resizer"
    assert (params["image_resizer.height"], params["image_resizer.width"]) == (320, 320)
    assert params["optimizer"] == "adam_optimizer"
    assert params["learning_rate_schedule"] == "exponential_decay_learning_rate"
    assert params["data_augmentation_options"] == "random_horizontal_flip,ssd_random_crop"


def test_flatten_names_every_leaf_and_indexes_repeated_messages():
    flat = flatten(read_pipeline_config(DATA / "faster_rcnn_resnet50_v1_640x640.config"))
    assert flat["model.faster_rcnn.first_stage_max_proposals"] == 300
    assert flat["model.faster_rcnn.first_stage_anchor_generator.grid_anchor_generator.scales"] == [0.25, 0.5, 1.0, 2.0]
    assert flat["eval_config.batch_size"] == 1
    assert flat["model.faster_rcnn.second_stage_post_processing.score_converter"] == "SOFTMAX"
    assert flat["train_config.data_augmentation_options.1.random_adjust_hue"] == {}


def test_text_format_details():
    parsed = parse_text_proto(
        """
        name: 'a\\'b' "c"   # adjacent strings concatenate
        ratio: -1.5e-3 flag: true
        inner < value: 1 > inner { value: 2 }
        empty {}
        """
    )
    assert parsed == {"name": "a'bc", "ratio": -0.0015, "flag": True, "inner": [{"value": 1}, {"value": 2}], "empty": {}}


@pytest.mark.parametrize(
    "text, message",
    [("model { faster_rcnn { num_classes: 3 }", "missing '}'"), ("model { : 3 }", "line 1: expected a field name"), ('a: "unterminated', "line 1: cannot read")],
)
def test_malformed_config_errors_say_where(text, message):
    with pytest.raises(PipelineConfigError, match=message):
        parse_text_proto(text)


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(PipelineConfigError, match="pipeline_config_path .*nope.config"):
        read_pipeline_config(tmp_path / "nope.config")
