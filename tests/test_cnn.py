"""The custom CNN takes any channel count and input size."""

from __future__ import annotations

import pytest
import torch

from medclass.model import SimpleCNN
from medclass.utils.errors import MedclassError


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("size", [28, 64, 224])
def test_output_shape(channels: int, size: int) -> None:
    net = SimpleCNN(in_chans=channels, num_classes=5).eval()
    assert net(torch.randn(2, channels, size, size)).shape == (2, 5)


def test_depth_and_width_follow_config() -> None:
    net = SimpleCNN(in_chans=1, num_classes=3, widths=(8, 16, 32, 64), convs_per_block=1, hidden=0)
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [8, 16, 32, 64]
    assert net(torch.randn(1, 1, 32, 32)).shape == (1, 3)


def test_too_small_input_is_explained() -> None:
    with pytest.raises(MedclassError, match="at least 8 px"):
        SimpleCNN(widths=(8, 8, 8))(torch.randn(1, 3, 4, 4))
