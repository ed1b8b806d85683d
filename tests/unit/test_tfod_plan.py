"""The TF OD API bridge's training plan: which --checkpoint_every_n saves the final step of the
unmodified model_main_tf2.py (checked against the real OD API in tests/frameworks/test_tfod.py),
and which plans are refused before anything starts."""
import pytest

pytest.importorskip("mlflow")

from cvops.integrations.pipeline_config import PipelineConfigError  # noqa: E402
from cvops.integrations.tfod import flag_value, plan_training, saves_final_step  # noqa: E402

CONFIG = {"train_config": {"num_steps": 1500}}


@pytest.mark.parametrize(("args", "num_steps", "every_n"), [
    ([], 1500, 500),                                  # the example's config: 1500 = 3 x 500
    (["--num_train_steps=200"], 200, 200),
    (["--num_train_steps", "25000"], 25000, 1000),
    (["-num_train_steps=1300"], 1300, 100),           # 13 iterations of 100: every one is saved
])
def test_derived_interval_is_the_largest_up_to_1000_that_saves_the_final_step(args, num_steps, every_n):
    plan = plan_training(CONFIG, args)
    assert (plan.num_steps, plan.checkpoint_every_n) == (num_steps, every_n)
    assert plan.extra_args == (f"--checkpoint_every_n={every_n}",)
    assert saves_final_step(num_steps, every_n)


def test_the_users_interval_is_kept_when_it_saves_the_final_step():
    # 150 steps after step 0 have passed at 200: saved, though 150 does not divide 200.
    plan = plan_training(CONFIG, ["--num_train_steps=200", "--checkpoint_every_n=150"])
    assert (plan.checkpoint_every_n, plan.extra_args) == (150, ())


@pytest.mark.parametrize(("args", "message"), [
    (["--num_train_steps=300", "--checkpoint_every_n=200"], "would never save step 300"),
    (["--checkpoint_every_n=1000"], "--checkpoint_every_n=1000 with 1500 training steps (train_config.num_steps)"),
    (["--num_train_steps=20"], "would stop at step 100"),
    (["--num_train_steps=5300"], "pass --checkpoint_every_n=100"),  # 53 iterations, 53 is prime
    (["--num_train_steps=many"], "not an integer"),
])
def test_plans_that_lose_the_final_step_are_refused_naming_the_numbers(args, message):
    with pytest.raises(PipelineConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        plan_training(CONFIG, args)


def test_no_steps_anywhere_is_refused():
    with pytest.raises(PipelineConfigError, match="train_config.num_steps is 0"):
        plan_training({"train_config": {}}, [])


def test_flag_value_reads_flags_as_absl_does():
    assert flag_value(["--a=1", "--b", "2", "--a=3"], "a") == "3"
    assert flag_value(["--a=1", "--b", "2"], "b") == "2"
    assert flag_value(["--ab=1"], "a") is None


def test_the_registered_detector_s_class_names_come_from_the_training_label_map(tmp_path):
    """What `export(registered_model_name=...)` tags the version with (cvops.class_names): the
    label map's ids, which the exported model answers, and their names."""
    from cvops.integrations.tfod import label_map_of

    label_map = tmp_path / "label_map.pbtxt"
    label_map.write_text("item {\n  id: 2\n  name: 'square'\n}\nitem {\n  id: 1\n  name: 'circle'\n"
                         "  display_name: 'round'\n}\n")
    config = {"train_input_reader": {"label_map_path": str(label_map)}}
    assert label_map_of(config) == {1: "round", 2: "square"}
    assert label_map_of({"eval_input_reader": [{"label_map_path": str(label_map)}]}) == {1: "round", 2: "square"}
    assert label_map_of({"train_config": {}}) == {}
