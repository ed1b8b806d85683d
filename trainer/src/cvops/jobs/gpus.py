"""Choosing GPUs for a job on this host, from what NVML says is free.

A GPU is busy when another cvops job holds it (its container's ``cvops.gpus`` label: a job
that is still loading data has no CUDA context yet, so NVML alone would miss it) or when NVML
lists compute processes on it (someone else's training). ``nvidia-ml-py`` is imported lazily:
a host without it or without a driver can still run ``gpus: 0`` jobs.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Iterable

from cvops.jobs.spec import GpuRequest


class GpuError(RuntimeError):
    """The GPU request cannot be met; the message says why and what to change."""


class GpusBusy(GpuError):
    """The request is valid but the GPUs it needs are in use right now."""


@dataclass(frozen=True)
class Gpu:
    index: int
    uuid: str
    name: str
    memory_used_mib: int
    memory_total_mib: int
    processes: int


@dataclass(frozen=True)
class GpuChoice:
    indices: tuple[int, ...]
    uuids: tuple[str, ...]


def probe_gpus() -> list[Gpu]:
    """The GPUs NVML sees; :class:`GpuError` (saying how to fix it) when NVML is unavailable."""
    try:
        import pynvml
    except ImportError:
        raise GpuError(
            "this job asks for GPUs but nvidia-ml-py is not installed; `pip install 'cvops[gpu]'`, "
            "or set gpus: 0 to run on the CPU"
        ) from None
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as error:
        raise GpuError(
            f"this job asks for GPUs but NVML cannot start ({error}): no NVIDIA driver on this host? "
            "Set gpus: 0 to run on the CPU"
        ) from None
    try:
        gpus = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            uuid = pynvml.nvmlDeviceGetUUID(handle)
            name = pynvml.nvmlDeviceGetName(handle)
            gpus.append(
                Gpu(
                    index=index,
                    uuid=uuid.decode() if isinstance(uuid, bytes) else uuid,
                    name=name.decode() if isinstance(name, bytes) else name,
                    memory_used_mib=memory.used // 2**20,
                    memory_total_mib=memory.total // 2**20,
                    processes=len(pynvml.nvmlDeviceGetComputeRunningProcesses(handle)),
                )
            )
        return gpus
    finally:
        pynvml.nvmlShutdown()


def choose_gpus(request: GpuRequest, gpus: list[Gpu], held: Iterable[int]) -> GpuChoice:
    """The GPUs to give a job asking for ``request`` (``all``, a count or device indices),
    avoiding those ``held`` by other cvops jobs or running someone's processes."""
    if not gpus:
        raise GpuError("this job asks for GPUs but NVML reports none on this host; set gpus: 0 to run on the CPU")
    by_index = {gpu.index: gpu for gpu in gpus}
    held = set(held)

    def busy_reason(gpu: Gpu) -> str | None:
        if gpu.index in held:
            return f"GPU {gpu.index} is held by another cvops job (see `cvops ps`)"
        if gpu.processes:
            return f"GPU {gpu.index} runs {gpu.processes} compute process(es), {gpu.memory_used_mib} MiB in use"
        return None

    if request == "all":
        wanted = list(gpus)
    elif isinstance(request, list):
        unknown = [index for index in request if index not in by_index]
        if unknown:
            raise GpuError(f"gpus: device(s) {unknown} do not exist; this host has GPUs {sorted(by_index)}")
        wanted = [by_index[index] for index in request]
    else:
        if request > len(gpus):
            raise GpuError(f"gpus: {request} requested but this host has {len(gpus)} GPU(s)")
        free = [gpu for gpu in gpus if busy_reason(gpu) is None]
        if len(free) < request:
            reasons = "; ".join(filter(None, (busy_reason(gpu) for gpu in gpus)))
            raise GpusBusy(f"{request} free GPU(s) needed, {len(free)} free: {reasons}")
        wanted = free[:request]
    reasons = [reason for reason in map(busy_reason, wanted) if reason]
    if reasons:
        raise GpusBusy("; ".join(reasons))
    return GpuChoice(indices=tuple(g.index for g in wanted), uuids=tuple(g.uuid for g in wanted))


def wait_for_gpus(
    request: GpuRequest,
    held_by_jobs: Callable[[], Iterable[int]],
    *,
    wait: bool,
    poll_s: float = 10.0,
    on_wait: Callable[[str], None] = lambda message: None,
    probe: Callable[[], list[Gpu]] = probe_gpus,
) -> GpuChoice:
    """:func:`choose_gpus`, polling every ``poll_s`` while the GPUs are busy when ``wait``."""
    while True:
        try:
            return choose_gpus(request, probe(), held_by_jobs())
        except GpusBusy as busy:
            if not wait:
                raise GpusBusy(f"{busy}. Wait for it with --wait-for-gpu, or ask for other GPUs") from None
            on_wait(str(busy))
            time.sleep(poll_s)
