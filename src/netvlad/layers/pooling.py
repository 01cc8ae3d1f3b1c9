"""Global max / average pooling heads (``layerTotalMaxPool``, ``layerTotalAvgPool``)."""

from __future__ import annotations

from torch import Tensor, nn

from netvlad.layers.functional import Float32Region, compute_dtype, l2n_eps_inside, whole_l2n


class _GlobalPool(nn.Module):
    """Global pooling over H×W (optionally after preL2), then whole-L2: B×D×H×W → B×D."""

    mode = ""

    def __init__(self, dim: int, pre_l2: bool = False):
        super().__init__()
        self.dim = int(dim)
        self.pre_l2 = bool(pre_l2)

    @property
    def out_dim(self) -> int:
        return self.dim

    def extra_repr(self) -> str:
        return f"dim={self.dim}, pre_l2={self.pre_l2}"

    def forward(self, x: Tensor) -> Tensor:
        """Pool a feature map.

        Args:
            x: B×D×H×W local features.

        Returns:
            B×D float32 (float64 for float64 input), L2-normalised.

        Shape:
            (B, D, H, W) → (B, D).
        """
        with Float32Region(x.device.type):
            x = x.to(compute_dtype(x))
            if self.pre_l2:
                x = l2n_eps_inside(x, dim=1)
            return whole_l2n(self._pool(x))


class MaxPool(_GlobalPool):
    """``layerTotalMaxPool``: max over all positions per channel, then L2."""

    mode = "max"

    def _pool(self, x: Tensor) -> Tensor:
        return x.amax(dim=(2, 3))


class AvgPool(_GlobalPool):
    """``layerTotalAvgPool``: mean over all positions per channel, then L2."""

    mode = "avg"

    def _pool(self, x: Tensor) -> Tensor:
        return x.mean(dim=(2, 3))
