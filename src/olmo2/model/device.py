"""Device names from the command line and configs, checked before any work: ``--device cuda`` on a
machine without CUDA fails at once, naming the device, instead of after the model has loaded or deep
inside torch."""

from __future__ import annotations

import torch

__all__ = ["resolve_device"]


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    """``auto`` (or None): cuda if available, else cpu. Any other device must exist on this machine."""
    if name is None or name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown device {str(name)!r}; use cpu, cuda, cuda:N or auto") from None
    backend = getattr(torch, device.type, None)
    if device.type != "cpu" and hasattr(backend, "is_available") and not backend.is_available():
        build = (
            " (this torch build has no CUDA)" if device.type == "cuda" and torch.version.cuda is None else ""
        )
        raise ValueError(
            f"device {str(name)!r}: {device.type.upper()} is not available on this machine{build}"
        )
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"device {str(name)!r}: only {torch.cuda.device_count()} CUDA device(s) are visible")
    return device
