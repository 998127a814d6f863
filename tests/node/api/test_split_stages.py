"""split()'s stage count from memory, checked before any network (the pipelines against
real providers are in tests/e2e/test_pipeline.py)."""

from __future__ import annotations

import pytest
import torch

from node.api.split import fewest_stages, split, weight_bytes
from node.errors import UserError


def three() -> torch.nn.Sequential:
    return torch.nn.Sequential(*(torch.nn.Linear(1000, 1000) for _ in range(3)))


def test_auto_stages_are_the_fewest_whose_weights_fit() -> None:
    blocks = list(three())
    assert weight_bytes(blocks[0]) == 1000 * 1000 * 4 + 1000 * 4
    assert fewest_stages(blocks, 2.0) == 1  # 24 MB doubled fits 1.4 GB of room
    assert fewest_stages(blocks, 0.61) == 3  # 10 MB of room: one 8 MB (doubled) block each
    assert fewest_stages(blocks, 0.62) == 2  # 20 MB: two blocks, then one
    with pytest.raises(UserError, match="does not fit one stage"):
        fewest_stages(blocks, 0.605)


def test_a_model_beyond_one_session_is_refused_before_the_network() -> None:
    with pytest.raises(UserError, match="do not fit one session"):
        split(three(), torch.randn(1, 1000), memory_gb=0.61, bootstrap=["/ip4/127.0.0.1/tcp/1"])
    with pytest.raises(UserError, match="stages is a number"):
        split(three(), torch.randn(1, 1000), stages=0, bootstrap=["/ip4/127.0.0.1/tcp/1"])
