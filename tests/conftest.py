"""Fixtures shared by the test files."""
from typing import List

import pytest
import torch


@pytest.fixture
def sdpa_calls(monkeypatch) -> List[bool]:
    """A list that grows on each ``F.scaled_dot_product_attention`` call (still computed) by
    whether that call had an ``attn_mask`` (the size bias of eq. 7)."""
    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, **kwargs):
        calls.append(attn_mask is not None)
        return sdpa(q, k, v, attn_mask=attn_mask, **kwargs)
    monkeypatch.setattr(torch.nn.functional, 'scaled_dot_product_attention', spy)
    return calls
