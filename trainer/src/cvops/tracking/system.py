"""System metrics (CPU, memory, disk, network, GPU via NVML) through the cvops worker.

The samplers are MLflow's own monitors (``mlflow.system_metrics``), so the metric names are the
``system/...`` ones MLflow's UI shows in its System metrics tab. Publishing goes through the
run's non-blocking path instead of MLflow's synchronous client, so an outage spools them like
any other metric and a dead server cannot hold the process at exit.
"""
from __future__ import annotations

import logging
import threading

log = logging.getLogger("cvops")

SAMPLING_INTERVAL_S = 10.0
_PREFIX = "system/"


def _monitors() -> list:
    from mlflow.system_metrics.metrics.cpu_monitor import CPUMonitor
    from mlflow.system_metrics.metrics.disk_monitor import DiskMonitor
    from mlflow.system_metrics.metrics.network_monitor import NetworkMonitor

    monitors = [CPUMonitor(), DiskMonitor(), NetworkMonitor()]
    try:
        from mlflow.system_metrics.metrics.gpu_monitor import GPUMonitor

        monitors.append(GPUMonitor())  # raises without pynvml or without an NVIDIA driver
    except Exception as exc:
        log.info("cvops: no GPU system metrics (%s)", exc)
    return monitors


def start_system_metrics(run, interval_s: float = SAMPLING_INTERVAL_S) -> threading.Thread | None:
    """Sample every ``interval_s`` and log ``system/*`` metrics to ``run`` until it ends."""
    try:
        monitors = _monitors()
    except Exception as exc:  # psutil missing or an unusual platform: training goes on untouched
        log.warning("cvops: system metrics are off (%s)", exc)
        return None
    stop = threading.Event()

    def sample() -> None:
        step = 0
        while run.status is None and not stop.wait(interval_s):
            metrics: dict[str, float] = {}
            for monitor in monitors:
                try:
                    monitor.collect_metrics()
                    metrics.update(monitor.aggregate_metrics())
                except Exception as exc:  # one flaky sensor must not stop the others
                    log.debug("cvops: system metrics sampler %s failed: %s", type(monitor).__name__, exc)
                finally:
                    monitor.clear_metrics()
            if run.status is None:
                run.log_metrics({_PREFIX + name: value for name, value in metrics.items()}, step=step)
            step += 1

    thread = threading.Thread(target=sample, name="cvops-system-metrics", daemon=True)
    thread.start()
    return thread
