"""Dataset digests: content-based, order-independent of the filesystem, cached by path+mtime+size."""
from __future__ import annotations

import os

from cvops.tracking import lineage
from cvops.tracking.lineage import dataset_digest, dataset_input


def _dataset(root):
    (root / "images").mkdir(parents=True)
    (root / "images" / "a.jpg").write_bytes(b"a" * 1000)
    (root / "images" / "b.jpg").write_bytes(b"b" * 1000)
    (root / "annotations.json").write_text('{"images": []}')
    return root


def test_digest_changes_with_content_and_names_only(tmp_path):
    data = _dataset(tmp_path / "coco")
    first = dataset_digest(data, tmp_path / "cache")
    assert first == dataset_digest(data, tmp_path / "cache") and first.files == 3
    (data / "images" / "b.jpg").write_bytes(b"B" * 1000)
    assert dataset_digest(data, tmp_path / "cache").sha256 != first.sha256
    (data / "images" / "b.jpg").rename(data / "images" / "c.jpg")
    renamed = dataset_digest(data, tmp_path / "cache")
    assert renamed.sha256 != first.sha256


def test_unchanged_files_are_not_read_again(tmp_path, monkeypatch):
    data = _dataset(tmp_path / "coco")
    dataset_digest(data, tmp_path / "cache")
    reads = []
    original = lineage.file_sha256
    monkeypatch.setattr(lineage, "file_sha256", lambda p: reads.append(p) or original(p))
    dataset_digest(data, tmp_path / "cache")
    assert reads == []
    os.utime(data / "annotations.json", ns=(1, 1))  # touched: re-hash that one file only
    dataset_digest(data, tmp_path / "cache")
    assert [p.name for p in reads] == ["annotations.json"]


def test_input_record_names_source_digest_and_context(tmp_path):
    data = _dataset(tmp_path / "coco")
    record = dataset_input(data, "coco-mini", "training", tmp_path / "cache")
    assert record["dataset"]["name"] == "coco-mini"
    assert record["dataset"]["source_type"] == "local"
    assert len(record["dataset"]["digest"]) <= 36
    tags = {t["key"]: t["value"] for t in record["tags"]}
    assert tags["mlflow.data.context"] == "training"
    assert tags["cvops.sha256"] == dataset_digest(data, tmp_path / "cache").sha256


def test_remote_datasets_are_identified_by_uri(tmp_path):
    record = dataset_input("s3://datasets/coco/2017", "coco", "training", tmp_path)
    assert record["dataset"]["source_type"] == "s3"
    assert "s3://datasets/coco/2017" in record["dataset"]["source"]
