"""Fixtures shared by the test files."""
from typing import List

import pytest
import torch


@pytest.fixture
def sdpa_calls(monkeypatch) -> List[int]:
    """A list that grows by one on each ``F.scaled_dot_product_attention`` call (still computed)."""
    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(torch.nn.functional, 'scaled_dot_product_attention',
                        lambda *a, **k: calls.append(1) or sdpa(*a, **k))
    return calls
