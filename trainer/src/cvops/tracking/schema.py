"""What every cvops run records about where it ran: the standard tags and environment params.

Nothing here imports a deep-learning framework. Versions come from package metadata; CUDA and
cuDNN versions are read only from a framework the training script has already imported.
"""
from __future__ import annotations

import getpass
import importlib.metadata
import os
import platform
import sys
from functools import lru_cache
from pathlib import Path

from cvops.config import Settings

# Framework distributions whose versions are worth a param when installed.
_FRAMEWORK_DISTRIBUTIONS = ("torch", "torchvision", "detectron2", "tensorflow", "tensorflow-cpu", "keras",
                            "tf-models-official", "object-detection", "numpy", "mlflow-skinny", "mlflow")


def _cvops_version() -> str:
    from cvops import __version__

    return __version__


def git_commit(start: Path | None = None) -> str | None:
    """HEAD's commit of the repository containing ``start`` (default: cwd), read from ``.git``."""
    directory = (start or Path.cwd()).resolve()
    for candidate in (directory, *directory.parents):
        git_dir = candidate / ".git"
        if git_dir.is_file():  # a worktree or submodule: "gitdir: <path>"
            text = git_dir.read_text().strip()
            if text.startswith("gitdir:"):
                git_dir = (candidate / text.split(":", 1)[1].strip()).resolve()
        if git_dir.is_dir():
            return _resolve_head(git_dir)
    return None


def _resolve_head(git_dir: Path) -> str | None:
    try:
        head = (git_dir / "HEAD").read_text().strip()
    except OSError:
        return None
    if not head.startswith("ref:"):
        return head or None
    ref = head.split(":", 1)[1].strip()
    common = git_dir
    if (git_dir / "commondir").exists():
        common = (git_dir / (git_dir / "commondir").read_text().strip()).resolve()
    for root in (git_dir, common):
        ref_file = root / ref
        if ref_file.exists():
            return ref_file.read_text().strip()
        packed = root / "packed-refs"
        if packed.exists():
            for line in packed.read_text().splitlines():
                if line.endswith(" " + ref):
                    return line.split(" ", 1)[0]
    return None


@lru_cache(maxsize=1)
def hardware() -> str:
    """``"2x NVIDIA H100 80GB HBM3"`` via NVML when available, else the CPU model and core count."""
    gpus = _nvml_gpus()
    if gpus:
        names = sorted(set(gpus))
        return ", ".join(f"{gpus.count(name)}x {name}" for name in names)
    return f"CPU: {_cpu_model()} ({os.cpu_count()} cores)"


def _nvml_gpus() -> list[str]:
    try:
        import pynvml
    except ImportError:
        return []
    try:
        pynvml.nvmlInit()
    except Exception:  # no driver / no GPU: NVML says so with its own error types
        return []
    try:
        names = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            name = pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(index))
            names.append(name.decode() if isinstance(name, bytes) else name)
        return names
    finally:
        pynvml.nvmlShutdown()


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def image_tag(settings: Settings) -> str | None:
    if settings.image and settings.image_digest:
        return f"{settings.image}@{settings.image_digest}"
    return settings.image or settings.image_digest


def standard_tags(settings: Settings) -> dict[str, str]:
    """The schema tags cvops can fill in itself, plus ``CVOPS_TAG_*`` from the environment."""
    tags = {
        "hardware": hardware(),
        "git_commit": settings.git_commit or git_commit(),
        "image": image_tag(settings),
        "image_id": settings.image_id,
        "mlflow.user": _user(),
        "mlflow.source.name": sys.argv[0] if sys.argv and sys.argv[0] else "python",
        "mlflow.source.type": "JOB" if settings.in_container else "LOCAL",
    }
    if tags["git_commit"]:
        tags["mlflow.source.git.commit"] = tags["git_commit"]
    tags.update(settings.tags)
    return {name: str(value) for name, value in tags.items() if value}


def _user() -> str | None:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return None


def environment_params(seed: int | None) -> dict[str, str]:
    """Python, cvops and framework versions; CUDA/cuDNN from frameworks already imported; seed."""
    params = {"python_version": platform.python_version(), "cvops_version": _cvops_version()}
    for dist in _FRAMEWORK_DISTRIBUTIONS:
        try:
            params[f"version.{dist}"] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    params.update(_accelerator_versions())
    if seed is not None:
        params["seed"] = str(seed)
    return params


def _accelerator_versions() -> dict[str, str]:
    versions: dict[str, str] = {}
    torch = sys.modules.get("torch")
    if torch is not None:
        cuda = getattr(getattr(torch, "version", None), "cuda", None)
        if cuda:
            versions["cuda_version"] = str(cuda)
        try:
            cudnn = torch.backends.cudnn.version()
        except Exception:  # torch built without cuDNN raises various errors here
            cudnn = None
        if cudnn:
            versions["cudnn_version"] = str(cudnn)
    tensorflow = sys.modules.get("tensorflow")
    if tensorflow is not None and not versions:
        try:
            build = tensorflow.sysconfig.get_build_info()
        except Exception:  # older/CPU builds lack parts of build info
            build = {}
        if build.get("cuda_version"):
            versions["cuda_version"] = str(build["cuda_version"])
        if build.get("cudnn_version"):
            versions["cudnn_version"] = str(build["cudnn_version"])
    return versions


def pip_freeze() -> str:
    """``name==version`` for every installed distribution, like ``pip freeze``, without a subprocess."""
    lines = set()
    for dist in importlib.metadata.distributions():
        name = dist.metadata.get("Name")
        if name:
            lines.add(f"{name}=={dist.version}")
    return "\n".join(sorted(lines, key=str.lower)) + "\n"
