"""Attention with the size bias of eq. 7, on PyTorch's fused kernels."""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor


def size_bias(sizes: Optional[Tensor], dtype: torch.dtype) -> Optional[Tensor]:
    """``log s`` as an additive mask ``[B, 1, 1, N]`` for the attention logits (eq. 7).

    Returns None for ``sizes=None`` (no reduction yet), so unreduced layers run unmasked.
    """
    if sizes is None:
        return None
    return sizes.log().to(dtype)[:, None, None, :]


def sized_attention(q: Tensor, k: Tensor, v: Tensor, sizes: Optional[Tensor] = None,
                    dropout_p: float = 0.0) -> Tensor:
    """``softmax(QK^T / sqrt(d) + log s) V`` through ``F.scaled_dot_product_attention``.

    Args:
        q, k, v: ``[B, heads, N, d]``.
        sizes: ``[B, N]`` token sizes, or None for plain attention.
    """
    return F.scaled_dot_product_attention(q, k, v, attn_mask=size_bias(sizes, q.dtype),
                                          dropout_p=dropout_p)
