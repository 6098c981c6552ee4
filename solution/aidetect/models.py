"""The networks, and nothing else.

``TraceNet`` looks at generator traces rather than content: a fixed high-pass
front end (the NPR neighbouring-pixel residual of Tan et al. 2024 and three SRM
filters) feeds a small residual CNN; global average pooling makes it work on
any input size, so a 128-pixel training crop and a 256-pixel test crop use the
same weights. It has a binary head (real vs generated) and a source head
(which of the six source classes), which share one embedding.

``CourseBaselineCNN`` is the course's baseline (three 3x3 convolutions), the
floor every model must beat.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

# ImageNet-free normalisation: pixels in [0, 1] are centred; the front end is
# high-pass, so the mean hardly matters.
_SRM = torch.tensor(
    [
        [[0, 0, 0, 0, 0], [0, -1, 2, -1, 0], [0, 2, -4, 2, 0], [0, -1, 2, -1, 0], [0, 0, 0, 0, 0]],
        [[-1, 2, -2, 2, -1], [2, -6, 8, -6, 2], [-2, 8, -12, 8, -2], [2, -6, 8, -6, 2], [-1, 2, -2, 2, -1]],
        [[0, 0, 0, 0, 0], [0, 0, 0, 0, 0], [0, 1, -2, 1, 0], [0, 0, 0, 0, 0], [0, 0, 0, 0, 0]],
    ],
    dtype=torch.float32,
) / torch.tensor([4.0, 12.0, 2.0]).view(3, 1, 1)


class HighPassFrontEnd(nn.Module):
    """Fixed filters: NPR residual per colour channel + 3 SRM residuals of the luma.

    With ``with_rgb`` the centred colour image is appended (3 more channels),
    so colour statistics of generators can be used as well as residuals.
    """

    def __init__(self, with_rgb: bool = False):
        super().__init__()
        self.with_rgb = with_rgb
        self.out_channels = 9 if with_rgb else 6
        self.register_buffer("srm", _SRM.unsqueeze(1))  # (3, 1, 5, 5)
        self.register_buffer("luma", torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # NPR: each pixel minus the top-left pixel of its 2x2 cell (Tan et al., CVPR 2024).
        height, width = x.shape[-2] - x.shape[-2] % 2, x.shape[-1] - x.shape[-1] % 2
        x = x[..., :height, :width]
        down = x[..., ::2, ::2]
        npr = x - F.interpolate(down, scale_factor=2.0, mode="nearest")
        grey = (x * self.luma).sum(dim=1, keepdim=True)
        srm = F.conv2d(grey, self.srm, padding=2)
        parts = [npr * 4.0, srm * 4.0] + ([x - 0.5] if self.with_rgb else [])
        return torch.cat(parts, dim=1)


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class TraceNet(nn.Module):
    """High-pass front end -> stem -> three residual stages -> embedding -> two heads."""

    def __init__(self, width: int = 32, n_sources: int = 6, dropout: float = 0.2, with_rgb: bool = False,
                 stem_stride: int = 2):
        super().__init__()
        self.front = HighPassFrontEnd(with_rgb)
        # The residuals are computed at full resolution; a strided stem (as the NPR
        # network's ResNet stem) then keeps the CPU cost ~4x below a full-resolution one.
        self.stem = nn.Sequential(
            nn.Conv2d(self.front.out_channels, width, 3, stem_stride, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)
        )
        self.stages = nn.Sequential(
            BasicBlock(width, width, 2),
            BasicBlock(width, 2 * width, 2),
            BasicBlock(2 * width, 4 * width, 2),
        )
        self.embedding_dim = 4 * width
        self.dropout = nn.Dropout(dropout)
        self.binary_head = nn.Linear(self.embedding_dim, 1)
        self.source_head = nn.Linear(self.embedding_dim, n_sources)

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """The last convolutional block's output (for Grad-CAM)."""
        return self.stages(self.stem(self.front(x)))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.feature_map(x).mean(dim=(2, 3))

    def forward_all(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        embedding = self.embed(x)
        hidden = self.dropout(embedding)
        return self.binary_head(hidden).squeeze(1), self.source_head(hidden), embedding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The generated-image logit (higher = more likely generated)."""
        return self.forward_all(x)[0]


class CourseBaselineCNN(nn.Module):
    """The course baseline: conv 3->k, pool, k->2k, pool, 2k->4k, GAP, linear (RGB input)."""

    def __init__(self, k: int = 32, n_sources: int = 6):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, k, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(k, 2 * k, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(2 * k, 4 * k, 3, padding=1), nn.ReLU(inplace=True),
        )
        self.embedding_dim = 4 * k
        self.binary_head = nn.Linear(4 * k, 1)
        self.source_head = nn.Linear(4 * k, n_sources)

    def feature_map(self, x):
        return self.features(x - 0.5)

    def embed(self, x):
        return self.feature_map(x).mean(dim=(2, 3))

    def forward_all(self, x):
        embedding = self.embed(x)
        return self.binary_head(embedding).squeeze(1), self.source_head(embedding), embedding

    def forward(self, x):
        return self.forward_all(x)[0]


ARCHITECTURES = {"tracenet": TraceNet, "course_baseline": CourseBaselineCNN}


def build_model(arch: str, **kwargs) -> nn.Module:
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; known: {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[arch](**kwargs)


def to_tensor(batch_uint8) -> torch.Tensor:
    """(B, H, W, 3) uint8 numpy -> (B, 3, H, W) float in [0, 1]."""
    if not batch_uint8.flags.writeable:  # read-only memmap slices: torch wants its own memory
        batch_uint8 = batch_uint8.copy()
    tensor = torch.from_numpy(batch_uint8).permute(0, 3, 1, 2).float()
    return tensor.div_(255.0)
