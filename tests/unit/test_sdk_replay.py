"""How the replayer cuts a spool into requests: MLflow's batch limits, order, refused records.

The transport here records calls instead of sending them; the real REST path is covered by
tests/integration/test_tracking_outage.py.
"""
from __future__ import annotations

import pytest

from cvops.tracking.replay import Replayer
from cvops.tracking.spool import Spool
from cvops.tracking.transport import Rejected, Transient


class RecordingTransport:
    def __init__(self, refuse_param: str | None = None, down: bool = False):
        self.calls: list[tuple] = []
        self.refuse_param, self.down = refuse_param, down

    def log_batch(self, run_id, metrics=(), params=(), tags=()):
        if self.down:
            raise Transient("connection refused")
        if self.refuse_param and any(name == self.refuse_param for name, _ in params):
            raise Rejected("Changing param values is not allowed", "INVALID_PARAMETER_VALUE")
        self.calls.append(("batch", run_id, list(metrics), list(params), list(tags)))

    def update_run(self, run_id, status, end_ms=None):
        self.calls.append(("status", run_id, status))


@pytest.fixture
def spool(tmp_path):
    spool = Spool(tmp_path / "spool", max_bytes=256 * 1024**2)
    yield spool
    spool.close(remove_if_drained=False)


def test_batches_respect_mlflow_limits(spool):
    spool.append([{"op": "params", "run": "r", "params": {f"p{i}_{j}": "v" for j in range(60)}} for i in range(3)])
    spool.append([{"op": "metrics", "run": "r", "metrics": [[f"m{j}", 1.0, 1, i] for j in range(500)]}
                  for i in range(5)])
    transport = RecordingTransport()
    assert Replayer(spool, transport).step() == 8
    for _, _, metrics, params, tags in transport.calls:
        assert len(metrics) <= 1000 and len(params) <= 100 and len(tags) <= 100
        assert len(metrics) + len(params) + len(tags) <= 1000
    assert sum(len(c[3]) for c in transport.calls) == 180
    assert sum(len(c[2]) for c in transport.calls) == 2500
    assert spool.is_drained()


def test_non_batch_records_keep_their_place(spool):
    spool.append([
        {"op": "metrics", "run": "r", "metrics": [["loss", 1.0, 1, 0]]},
        {"op": "status", "run": "r", "status": "FINISHED", "end_ms": 5},
        {"op": "metrics", "run": "r", "metrics": [["loss", 0.5, 2, 1]]},
    ])
    transport = RecordingTransport()
    Replayer(spool, transport).step()
    assert [c[0] for c in transport.calls] == ["batch", "status", "batch"]


def test_a_refused_param_becomes_a_conflict_tag_and_the_rest_goes_through(spool):
    spool.append([{"op": "params", "run": "r", "params": {"lr": "0.2", "epochs": "10"}},
                  {"op": "metrics", "run": "r", "metrics": [["loss", 1.0, 1, 0]]}])
    transport = RecordingTransport(refuse_param="lr")
    Replayer(spool, transport).step()
    sent_params = [p for c in transport.calls for p in c[3]]
    sent_tags = [t for c in transport.calls for t in c[4]]
    assert sent_params == [("epochs", "10")]
    assert sent_tags == [("param_conflict.lr", "0.2")]
    assert any(c[2] for c in transport.calls)  # the metric was not held back
    assert spool.is_drained()


def test_an_outage_keeps_everything_for_later(spool):
    spool.append([{"op": "metrics", "run": "r", "metrics": [["loss", 1.0, 1, 0]]}])
    with pytest.raises(Transient):
        Replayer(spool, RecordingTransport(down=True)).step()
    assert spool.count_pending() == 1
    transport = RecordingTransport()
    Replayer(spool, transport).step()
    assert transport.calls and spool.is_drained()
