"""Numeric precision: whether matrix products run in bf16 on this device.

Training and the ``hf:`` encoders ask the same question, so the answer lives below both.
"""

from __future__ import annotations

import torch


def use_bf16(precision: str, device: torch.device | None = None) -> bool:
    """Whether training multiplies in bf16: ``bf16``, or ``auto`` on a GPU that has bf16 (Ampere
    and later) or a CPU with native bf16 products (AVX-512 BF16 or AMX: about 2.3x fp32's matmul
    rate on the trainer's shapes). Elsewhere ``auto`` stays fp32, because emulated bf16 is slower
    than fp32."""
    if precision == "auto" and device is not None and device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if precision == "auto":
        try:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            return False
    return precision == "bf16"
