"""How fast arithmetic runs on this device: the number format (precision) and whether to compile the model.

One place decides, from what the hardware says it can do, never from a timing (a timed probe gives another
answer on a busy machine):

- bfloat16 autocast where the chip computes it natively: NVIDIA GPUs from Ampere on (compute capability 8.0)
  and CPUs with AVX512-BF16 or AMX. Elsewhere bfloat16 is emulated and slower than float32 (a T4 answers
  ``torch.cuda.is_bf16_supported()`` with True, and a CPU without those instructions takes seconds for a
  matrix multiply that float32 does in milliseconds).
- float16 autocast, with a ``GradScaler`` that keeps small gradients from rounding to zero, on older GPUs that
  have tensor cores (compute capability 7.x: V100, T4 on Kaggle and Colab).
- float32 everywhere else (older GPUs, other CPUs, Apple's mps).

``DS9_PRECISION`` (``fp32``, ``bf16`` or ``fp16``) overrides that choice, so that any machine can run the
bfloat16 path (emulated where the chip lacks it: slow, but the same arithmetic) or stay in float32.

``torch.compile`` is used where it pays back its compile time: on a GPU, for a model big enough to be worth it.
On a CPU it gains a few percent per step and costs tens of seconds of compiling, so it stays off unless asked
for. ``DS9_COMPILE=0`` (or 1) overrides the automatic choice everywhere.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
from pathlib import Path

import torch

PRECISIONS = ("bf16", "fp16", "fp32")
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
COMPILE_MIN_PARAMETERS = 5_000_000  # below this, compile time outweighs what a short run saves


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """True when this CPU multiplies bfloat16 in hardware (AVX512-BF16 or AMX), read from Linux's cpuinfo.

    Other systems answer False: float32 is the safe choice when we cannot tell.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text(errors="replace").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def choose_precision(
    device_type: str, cuda_capability: tuple[int, int] | None = None, cpu_has_bf16: bool | None = None
) -> str:
    """The fastest number format that trains correctly on this device: "bf16", "fp16" or "fp32".

    ``cuda_capability`` (major, minor) and ``cpu_has_bf16`` describe the hardware; left out, they are read
    from the machine (this is what makes the choice testable without the hardware).
    """
    if device_type == "cuda":
        major, _ = cuda_capability or torch.cuda.get_device_capability()
        if major >= 8:
            return "bf16"
        return "fp16" if major >= 7 else "fp32"
    if device_type == "cpu":
        return "bf16" if (cpu_has_native_bf16() if cpu_has_bf16 is None else cpu_has_bf16) else "fp32"
    return "fp32"


def forced_precision() -> str | None:
    """The number format ``DS9_PRECISION`` asks for, or None when it is unset (the device then decides)."""
    value = os.environ.get("DS9_PRECISION", "").strip().lower()
    if not value:
        return None
    if value not in PRECISIONS:
        raise ValueError(
            f"DS9_PRECISION={value!r} is not a number format: set it to one of {', '.join(PRECISIONS)}, "
            "or unset it to let the device choose"
        )
    return value


def device_precision(device: str | torch.device, enabled: bool = True) -> str:
    """The precision a run uses: "fp32" when reduced precision is turned off (``enabled=False``), else
    ``DS9_PRECISION`` when set, else ``choose_precision`` for this device."""
    if not enabled:
        return "fp32"
    return forced_precision() or choose_precision(torch.device(device).type)


def autocast(device: str | torch.device, precision: str) -> contextlib.AbstractContextManager:
    """The context a forward pass runs in: autocast to bf16/fp16, or nothing for fp32."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=AUTOCAST_DTYPES[precision])


def grad_scaler(device: str | torch.device, precision: str) -> torch.amp.GradScaler:
    """A loss scaler, active only for float16 (whose small range would round small gradients to zero).

    Disabled, it passes the loss and the optimizer step through unchanged.
    """
    return torch.amp.GradScaler(torch.device(device).type, enabled=precision == "fp16")


def should_compile(device: str | torch.device, model: torch.nn.Module, requested: bool | None = None) -> bool:
    """Whether to ``torch.compile`` the training step: ``DS9_COMPILE`` first, then ``requested``, then auto.

    Auto compiles only on CUDA and only models of at least ``COMPILE_MIN_PARAMETERS`` parameters: on a CPU
    the gain (about 5% per step, measured) does not pay for the compile time of a run of minutes, and a tiny
    model trains in less time than compiling it takes.
    """
    from .settings import env_switch

    forced = env_switch("DS9_COMPILE", on="torch.compile", off="eager mode (no compiling)")
    if forced is not None:
        return forced
    if requested is not None:
        return requested
    parameters = sum(p.numel() for p in model.parameters())
    return torch.device(device).type == "cuda" and parameters >= COMPILE_MIN_PARAMETERS
