"""Mixed precision as a device-aware setting: ``amp`` and ``channels_last`` of the bundle configs.

``amp: auto`` picks what the device runs fastest without a loss of accuracy (docs/results.md,
"bf16 training on the CPU"): bf16 autocast on CPUs with native bf16 instructions (AVX512-BF16 or
AMX), bf16 on CUDA devices that support it (fp16 with a gradient scaler on older ones), fp32
elsewhere. Autocast covers the network's forward pass only; the network's outputs are cast back to
fp32, so losses and metrics are always computed in fp32.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from pathlib import Path

import torch

AMP_CHOICES = ("auto", "bf16", "fp16", "off")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """True when the CPU has bf16 instructions (Linux ``/proc/cpuinfo`` flags avx512_bf16 or amx_bf16).

    Without them PyTorch emulates bf16 on the CPU, which is slower than fp32.
    """
    try:
        text = Path("/proc/cpuinfo").read_text(errors="ignore")
    except OSError:
        return False
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
            break
    return bool(flags & {"avx512_bf16", "amx_bf16"})


def _parse_amp(amp: str | bool | None) -> str:
    """``amp`` as one of AMP_CHOICES: True -> auto, False/None -> off; strings case-insensitive."""
    if amp is None or amp is False:
        return "off"
    if amp is True:
        return "auto"
    text = str(amp).strip().lower()
    text = {
        "true": "auto",
        "1": "auto",
        "yes": "auto",
        "false": "off",
        "0": "off",
        "no": "off",
        "none": "off",
        "fp32": "off",
        "bfloat16": "bf16",
        "float16": "fp16",
        "half": "fp16",
    }.get(text, text)
    if text not in AMP_CHOICES:
        raise ValueError(f"amp {amp!r} is not one of {', '.join(AMP_CHOICES)}")
    return text


def _parse_flag(value: str | bool | None, name: str) -> bool | None:
    """A true/false/auto setting: True, False or None (auto)."""
    if value is None or isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text == "auto":
        return None
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{name} {value!r} is not one of auto, true, false")


@dataclass(frozen=True)
class Precision:
    """How the network runs: autocast dtype (None = fp32), device type and memory format.

    Attributes:
        dtype: autocast dtype, or None for fp32.
        device_type: "cpu" or "cuda" (torch.autocast's device type).
        channels_last: run convolutions in channels-last memory format.
        engine_amp: fp16 on CUDA, which needs MONAI's own amp path (GradScaler) in the trainer.
    """

    dtype: torch.dtype | None = None
    device_type: str = "cpu"
    channels_last: bool = False
    engine_amp: bool = False

    @property
    def name(self) -> str:
        """ "bf16", "fp16" or "fp32" (for logs and reports)."""
        return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(self.dtype, "fp32")

    def autocast(self) -> contextlib.AbstractContextManager:
        """The autocast context of the forward pass (a no-op for fp32 and for MONAI's fp16 path)."""
        if self.dtype is None or self.engine_amp:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def to_input(self, image: torch.Tensor) -> torch.Tensor:
        """``image`` (B, C, H, W) in the memory format the network runs in."""
        return image.contiguous(memory_format=torch.channels_last) if self.channels_last else image

    def prepare(self, module: torch.nn.Module) -> torch.nn.Module:
        """``module`` converted to the memory format (in place); parameters stay fp32."""
        return module.to(memory_format=torch.channels_last) if self.channels_last else module


FP32 = Precision()


def resolve_precision(
    amp: str | bool | None = "auto", device: str | torch.device = "cpu", channels_last: str | bool | None = "auto"
) -> Precision:
    """The :class:`Precision` for ``amp`` (auto, bf16, fp16, off) on ``device``.

    ``auto``: bf16 on a CPU with native bf16, bf16 on a CUDA device that supports it, else fp16 with a
    gradient scaler on CUDA, else fp32. An explicit ``bf16``/``fp16`` is honoured (``fp16`` on the
    CPU is refused: PyTorch's CPU fp16 kernels are slow and unscaled). ``channels_last`` auto: on
    whenever autocast is on (measured faster on this project's CPU and on GPUs, docs/benchmarks.md).

    Raises:
        ValueError: an unknown setting, or fp16 on the CPU.
    """
    mode = _parse_amp(amp)
    cl = _parse_flag(channels_last, "channels_last")
    device_type = torch.device(device).type
    if device_type not in ("cpu", "cuda"):
        mode = "off"  # autocast on other backends (mps, xpu) is not measured here
    if mode == "auto":
        if device_type == "cuda":
            mode = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        else:
            mode = "bf16" if cpu_has_native_bf16() else "off"
    if mode == "fp16" and device_type == "cpu":
        raise ValueError("amp fp16 is not supported on the CPU; use bf16 or off")
    dtype = DTYPES.get(mode)
    return Precision(
        dtype=dtype,
        device_type=device_type,
        channels_last=(dtype is not None) if cl is None else cl,
        engine_amp=(mode == "fp16"),
    )
