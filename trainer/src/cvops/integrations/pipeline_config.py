"""Read a TF Object Detection API ``pipeline.config`` without the OD API's compiled protos.

The file is protobuf text format. A small tokenizer turns it into nested dicts (a field seen
more than once becomes a list), and :func:`summarize` picks the settings a CV team compares
runs by: meta-architecture, classes, resizer, backbone, batch size, steps, optimizer and
learning-rate schedule, fine-tune checkpoint and augmentations.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

_TOKEN = re.compile(
    r"""
    \s+ | \#[^\n]*                                  # whitespace, comments
    | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
    | (?P<punct>[{}:<>\[\],;])
    | (?P<word>[^\s{}:<>\[\],;"'\#]+)
    """,
    re.VERBOSE,
)
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "'": "'", "\\": "\\"}


class PipelineConfigError(ValueError):
    pass


def _tokens(text: str) -> list[tuple[str, str, int]]:
    tokens, position = [], 0
    while position < len(text):
        match = _TOKEN.match(text, position)
        if not match:
            line = text.count("\n", 0, position) + 1
            raise PipelineConfigError(f"pipeline.config line {line}: cannot read {text[position:position + 20]!r}")
        kind = match.lastgroup
        if kind:
            tokens.append((kind, match.group(kind), text.count("\n", 0, position) + 1))
        position = match.end()
    return tokens


def _scalar(kind: str, raw: str) -> Any:
    if kind == "string":
        return re.sub(r"\\(.)", lambda m: _ESCAPES.get(m.group(1), m.group(1)), raw[1:-1])
    if raw in ("true", "True"):
        return True
    if raw in ("false", "False"):
        return False
    for number in (int, float):
        try:
            return number(raw)
        except ValueError:
            pass
    if raw.lower().rstrip("f") in ("inf", "-inf", "infinity", "-infinity", "nan"):
        return float(raw.lower().rstrip("f").replace("infinity", "inf"))
    return raw  # enum value, e.g. ``type: SMOOTH_L1``


def parse_text_proto(text: str) -> dict[str, Any]:
    tokens = _tokens(text)
    position = 0

    def message(closing: str | None) -> dict[str, Any]:
        nonlocal position
        fields: dict[str, Any] = {}
        while True:
            if position >= len(tokens):
                if closing:
                    raise PipelineConfigError(f"pipeline.config: missing '{closing}' at end of file")
                return fields
            kind, raw, line = tokens[position]
            if closing and raw == closing and kind == "punct":
                position += 1
                return fields
            if kind != "word":
                raise PipelineConfigError(f"pipeline.config line {line}: expected a field name, got {raw!r}")
            name = raw
            position += 1
            if position < len(tokens) and tokens[position][1] == ":":
                position += 1
            if position >= len(tokens):
                raise PipelineConfigError(f"pipeline.config line {line}: field {name!r} has no value")
            kind, raw, line = tokens[position]
            if raw in ("{", "<") and kind == "punct":
                position += 1
                value: Any = message("}" if raw == "{" else ">")
            elif raw == "[" and kind == "punct":
                position += 1
                value = []
                while tokens[position][1] != "]":
                    if tokens[position][1] != ",":
                        value.append(_scalar(tokens[position][0], tokens[position][1]))
                    position += 1
                position += 1
            else:
                value = _scalar(kind, raw)
                position += 1
                # Adjacent string literals concatenate, as in protobuf text format.
                while value.__class__ is str and kind == "string" and position < len(tokens) and tokens[position][0] == "string":
                    value += _scalar("string", tokens[position][1])
                    position += 1
            if position < len(tokens) and tokens[position][1] in (",", ";"):
                position += 1
            _add_field(fields, name, value)

    return message(None)


def _add_field(fields: dict[str, Any], name: str, value: Any) -> None:
    if name not in fields:
        fields[name] = value
    elif isinstance(fields[name], list) and not isinstance(value, list):
        fields[name].append(value)
    else:
        fields[name] = [fields[name], value]


def read_pipeline_config(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as error:
        raise PipelineConfigError(f"pipeline_config_path {str(path)!r}: {error.strerror}") from error
    return parse_text_proto(text)


def _only(message: Any) -> tuple[str, Any]:
    """The set message field of a ``oneof`` such as ``model { faster_rcnn { ... } }``."""
    if isinstance(message, dict):
        for name, value in message.items():
            if isinstance(value, dict):
                return name, value
    return "", {}


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def _oneof_params(params: dict[str, Any], name: str, field_prefix: str, message: Any) -> dict[str, Any]:
    """``params[name] = <chosen type>`` plus its scalar settings as ``<field_prefix>.<key>``;
    returns the chosen message (for nested oneofs such as the optimizer's learning rate)."""
    chosen_type, chosen = _only(message)
    if chosen_type:
        params[name] = chosen_type
        for key, value in chosen.items():
            if not isinstance(value, (dict, list)):
                params[f"{field_prefix}.{key}"] = value
    return chosen


def summarize(config: dict[str, Any]) -> dict[str, Any]:
    """The settings runs are compared by, flat, under stable names (absent ones are omitted)."""
    params: dict[str, Any] = {}
    architecture, model = _only(config.get("model"))
    if architecture:
        params["meta_architecture"] = architecture
    params["num_classes"] = model.get("num_classes")
    _oneof_params(params, "image_resizer", "image_resizer", model.get("image_resizer"))
    params["feature_extractor"] = model.get("feature_extractor", {}).get("type")
    train = config.get("train_config", {})
    for key in ("batch_size", "num_steps", "fine_tune_checkpoint", "fine_tune_checkpoint_type", "use_bfloat16"):
        params[key] = train.get(key)
    params["optimizer.use_moving_average"] = train.get("optimizer", {}).get("use_moving_average")
    optimizer = _oneof_params(params, "optimizer", "optimizer", train.get("optimizer"))
    _oneof_params(params, "learning_rate_schedule", "learning_rate", optimizer.get("learning_rate"))
    augmentations = [_only(option)[0] for option in _as_list(train.get("data_augmentation_options"))]
    if augmentations:
        params["data_augmentation_options"] = ",".join(augmentations)
    return {key: value for key, value in params.items() if value is not None}


def flatten(config: Any, prefix: str = "") -> dict[str, Any]:
    """Every leaf as ``model.faster_rcnn.num_classes``; repeated messages get their index; an
    empty message (``random_horizontal_flip {}``: the option with defaults) is a leaf ``{}``."""
    flat: dict[str, Any] = {}
    if isinstance(config, dict) and config:
        for key, value in config.items():
            flat.update(flatten(value, f"{prefix}.{key}" if prefix else key))
    elif isinstance(config, list) and any(isinstance(item, (dict, list)) for item in config):
        for index, item in enumerate(config):
            flat.update(flatten(item, f"{prefix}.{index}"))
    else:
        flat[prefix] = config
    return flat
