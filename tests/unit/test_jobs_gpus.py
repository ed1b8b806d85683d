"""Choosing GPUs: free ones are taken, busy ones wait or fail with the reason, no NVML fails clearly."""
from __future__ import annotations

import pytest

from cvops.jobs import gpus as selection
from cvops.jobs.gpus import Gpu, GpuError, GpusBusy, choose_gpus, wait_for_gpus


def host(*processes: int) -> list[Gpu]:
    return [Gpu(i, f"GPU-{i}", "H100", 500 * p, 80_000, p) for i, p in enumerate(processes)]


def test_count_takes_the_first_free_gpus():
    choice = choose_gpus(2, host(1, 0, 0, 0), held=[2])
    assert choice.indices == (1, 3) and choice.uuids == ("GPU-1", "GPU-3")


def test_all_and_device_ids_need_exactly_those_gpus_free():
    assert choose_gpus("all", host(0, 0), held=[]).indices == (0, 1)
    assert choose_gpus([1], host(3, 0), held=[]).indices == (1,)
    with pytest.raises(GpusBusy, match="GPU 0 runs 3 compute process"):
        choose_gpus("all", host(3, 0), held=[])
    with pytest.raises(GpusBusy, match="GPU 1 is held by another cvops job"):
        choose_gpus([1], host(0, 0), held=[1])


def test_impossible_requests_are_errors_not_waits():
    with pytest.raises(GpuError, match="requested but this host has 2") as caught:
        choose_gpus(4, host(0, 0), held=[])
    assert not isinstance(caught.value, GpusBusy)
    with pytest.raises(GpuError, match=r"device\(s\) \[5\] do not exist"):
        choose_gpus([5], host(0, 0), held=[])
    with pytest.raises(GpuError, match="reports none"):
        choose_gpus(1, [], held=[])


def test_second_job_fails_clearly_when_told_not_to_wait():
    with pytest.raises(GpusBusy, match="--wait-for-gpu"):
        wait_for_gpus(1, lambda: [0], wait=False, probe=lambda: host(0))


def test_second_job_waits_until_the_first_releases_the_gpu(monkeypatch):
    monkeypatch.setattr(selection.time, "sleep", lambda seconds: None)
    held = iter([[0], [0], []])
    waits: list[str] = []
    choice = wait_for_gpus(1, lambda: next(held), wait=True, on_wait=waits.append, probe=lambda: host(0))
    assert choice.indices == (0,)
    assert len(waits) == 2 and "held by another cvops job" in waits[0]


def test_without_nvml_a_gpu_job_fails_with_the_fix(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_pynvml(name, *args, **kwargs):
        if name == "pynvml":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pynvml)
    with pytest.raises(GpuError, match=r"nvidia-ml-py is not installed.*gpus: 0"):
        selection.probe_gpus()


def test_nvml_without_a_driver_fails_with_the_fix():
    pytest.importorskip("pynvml", reason="nvidia-ml-py is the `gpu` extra")
    try:
        gpus = selection.probe_gpus()
    except GpuError as error:
        assert "NVML cannot start" in str(error) and "gpus: 0" in str(error)
    else:
        assert all(gpu.uuid.startswith("GPU-") for gpu in gpus)  # a GPU host: NVML answered
