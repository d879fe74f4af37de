"""Two tiny custom architectures (inputs 3x32x32), written without any pruning in mind.

``AcmeCNN`` is conv-bn-relu blocks with residual connections and a linear head;
its ``ChannelScale`` layer holds a parameter torch-pruning does not know how to
prune, so it needs a custom pruner (see ``tprune_models.py``).
``AcmeAttnNet`` has a custom attention block whose forward reshapes with its
``num_heads``/``head_dim`` attributes: after pruning shrinks ``qkv``, that
reshape breaks unless an adapter updates ``head_dim`` (see ``tprune_models.py``).
"""

from __future__ import annotations

import torch
from torch import nn


class ConvBnRelu(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, act: bool = True) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True) if act else nn.Identity(),
        )


class ResidualBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = ConvBnRelu(channels, channels)
        self.conv2 = ConvBnRelu(channels, channels, act=False)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x + self.conv2(self.conv1(x)))


class ChannelScale(nn.Module):
    """A learnable per-channel scale of a (B, C, H, W) feature map."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight.view(1, -1, 1, 1)


class AcmeCNN(nn.Module):
    """stem (stride 2) -> residual block -> downsample (stride 2) -> residual block -> scale -> pool -> linear."""

    def __init__(self, widths: tuple[int, int] = (16, 32), num_classes: int = 10) -> None:
        super().__init__()
        self.stem = ConvBnRelu(3, widths[0], stride=2)
        self.stage1 = ResidualBlock(widths[0])
        self.down = ConvBnRelu(widths[0], widths[1], stride=2)
        self.stage2 = ResidualBlock(widths[1])
        self.scale = ChannelScale(widths[1])
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(widths[1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.scale(self.stage2(self.down(self.stage1(self.stem(x)))))
        return self.head(self.pool(x).flatten(1))


class AcmeAttention(nn.Module):
    """Multi-head self-attention over tokens (B, N, C); reshapes with its own attributes."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, _ = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
        x = (attn @ v).transpose(1, 2).reshape(batch, tokens, self.num_heads * self.head_dim)
        return self.proj(x)


class AcmeAttnNet(nn.Module):
    """Patch embedding (4x4) + position embedding -> one pre-norm attention/MLP block -> mean pool -> head."""

    def __init__(self, dim: int = 32, num_heads: int = 2, num_classes: int = 10) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(3, dim, kernel_size=4, stride=4)
        self.pos_embed = nn.Parameter(torch.randn(1, 64, dim) * 0.02)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = AcmeAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2) + self.pos_embed
        x = x + self.attn(self.norm1(x))
        x = x + self.mlp(self.norm2(x))
        return self.head(self.norm(x).mean(dim=1))
