"""The zoo's image architectures, all small and fast on a CPU and exportable by both ONNX exporters and
``torch.export``: plain CNN, VGG-style with BatchNorm, ResNet-style, depthwise (MobileNet-style) and a
tiny ViT (attention written with plain matmuls so every exporter sees ordinary ops).
"""

from __future__ import annotations

import torch
from torch import nn

ARCHITECTURES: tuple[str, ...] = ("cnn", "vgg", "resnet", "mobilenet", "vit")


def _conv_bn(cin: int, cout: int, stride: int = 1, groups: int = 1, kernel: int = 3) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU())


class PlainCNN(nn.Module):
    """Three conv-ReLU blocks (no normalisation), global max pool, linear head."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10, width: int = 24):
        super().__init__()
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(2 * w, 2 * w, 3, padding=1), nn.ReLU(), nn.AdaptiveMaxPool2d(1),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(2 * w, num_classes))

    def forward(self, x):
        return self.classifier(self.features(x))


class VGGNet(nn.Module):
    """Three conv-BN-ReLU stages with max-pooling, global average pool, linear head."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10, width: int = 16):
        super().__init__()
        w = width
        self.features = nn.Sequential(
            _conv_bn(in_channels, w), _conv_bn(w, w), nn.MaxPool2d(2),
            _conv_bn(w, 2 * w), nn.MaxPool2d(2),
            _conv_bn(2 * w, 4 * w), nn.AdaptiveAvgPool2d(1),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(4 * w, num_classes))

    def forward(self, x):
        return self.classifier(self.features(x))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
            nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout),
        )
        self.shortcut = nn.Identity() if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        self.act = nn.ReLU()

    def forward(self, x):
        return self.act(self.body(x) + self.shortcut(x))


class ResNetSmall(nn.Module):
    """Stem + three basic blocks (one per stage, strides 2/2/2), global average pool, linear head."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10, width: int = 16):
        super().__init__()
        w = width
        self.stem = _conv_bn(in_channels, w)
        self.layer1 = BasicBlock(w, w, 2)  # downsample early: CPU-cheap at 28–32 px
        self.layer2 = BasicBlock(w, 2 * w, 2)
        self.layer3 = BasicBlock(2 * w, 4 * w, 2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4 * w, num_classes)

    def forward(self, x):
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


class DepthwiseSeparable(nn.Sequential):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__(_conv_bn(cin, cin, stride, groups=cin), _conv_bn(cin, cout, kernel=1))


class MobileNetSmall(nn.Module):
    """MobileNet-v1 style: a stem then depthwise-separable blocks, global average pool, linear head."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10, width: int = 16):
        super().__init__()
        w = width
        self.features = nn.Sequential(
            _conv_bn(in_channels, w, stride=2),
            DepthwiseSeparable(w, 2 * w, 1), DepthwiseSeparable(2 * w, 4 * w, 2),
            DepthwiseSeparable(4 * w, 4 * w, 1), nn.AdaptiveAvgPool2d(1),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(4 * w, num_classes))

    def forward(self, x):
        return self.classifier(self.features(x))


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, d = x.shape
        h = self.heads
        q, k, v = self.qkv(x).reshape(b, n, 3, h, d // h).permute(2, 0, 3, 1, 4)
        att = torch.softmax(q @ k.transpose(-2, -1) * (d // h) ** -0.5, dim=-1)
        return self.proj((att @ v).transpose(1, 2).reshape(b, n, d))


class TransformerBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp), nn.GELU(), nn.Linear(mlp, dim))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TinyViT(nn.Module):
    """Patch embedding (conv, stride = patch), learned positions, a few pre-norm blocks, mean-pool head."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10, image_size: int = 32, patch: int = 4,
                 dim: int = 64, depth: int = 3, heads: int = 4, mlp: int = 128):
        super().__init__()
        self.embed = nn.Conv2d(in_channels, dim, patch, patch)
        tokens = (image_size // patch) ** 2
        self.pos = nn.Parameter(torch.zeros(1, tokens, dim))
        nn.init.trunc_normal_(self.pos, std=0.02)
        self.blocks = nn.Sequential(*[TransformerBlock(dim, heads, mlp) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x):
        x = self.embed(x).flatten(2).transpose(1, 2) + self.pos
        x = self.norm(self.blocks(x))
        return self.head(x.mean(dim=1))


def make_arch(name: str, in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    """Build one of :data:`ARCHITECTURES` for the given input."""
    if name == "cnn":
        return PlainCNN(in_channels, num_classes)
    if name == "vgg":
        return VGGNet(in_channels, num_classes)
    if name == "resnet":
        return ResNetSmall(in_channels, num_classes)
    if name == "mobilenet":
        return MobileNetSmall(in_channels, num_classes)
    if name == "vit":
        return TinyViT(in_channels, num_classes, image_size=image_size, patch=4)
    raise ValueError(f"unknown architecture {name!r}; choose from {', '.join(ARCHITECTURES)}")
