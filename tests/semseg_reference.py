"""A PyTorch PSPNet that mirrors the PSPNet authors' code (hszhao/semseg: model/pspnet.py, model/resnet.py).

`PSPNet(...).state_dict()` has their key layout (layer0 deep stem, layerN, ppm.features, cls, aux) and
`forward` computes their eval-mode logits. Checked against their own modules: same keys, same logits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tests.mmseg_reference import Bottleneck  # the same torchvision-style block, dilated below

BLOCKS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}


def _layer(cin, planes, blocks, stride):
    downsample = None
    if stride != 1 or cin != planes * 4:
        downsample = nn.Sequential(nn.Conv2d(cin, planes * 4, 1, stride, bias=False), nn.BatchNorm2d(planes * 4))
    return nn.Sequential(Bottleneck(cin, planes, stride, 1, downsample),
                         *[Bottleneck(planes * 4, planes, 1, 1, None) for _ in range(blocks - 1)])


class PSPNet(nn.Module):
    """model/pspnet.py's PSPNet (deep-base ResNet, layer3 dilated 2, layer4 dilated 4, align_corners=True);
    `base_width` and `head` shrink it for tests (theirs: 64 and 512)."""

    def __init__(self, layers=50, bins=(1, 2, 3, 6), classes=150, base_width=64, head=512):
        super().__init__()
        w = base_width
        self.layer0 = nn.Sequential(
            nn.Conv2d(3, w, 3, 2, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU(),
            nn.Conv2d(w, w, 3, 1, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU(),
            nn.Conv2d(w, 2 * w, 3, 1, 1, bias=False), nn.BatchNorm2d(2 * w), nn.ReLU(),
            nn.MaxPool2d(3, 2, 1))
        blocks = BLOCKS[layers]
        self.layer1 = _layer(2 * w, w, blocks[0], 1)
        self.layer2 = _layer(4 * w, 2 * w, blocks[1], 2)
        self.layer3 = _layer(8 * w, 4 * w, blocks[2], 2)
        self.layer4 = _layer(16 * w, 8 * w, blocks[3], 2)
        for layer, dilation in ((self.layer3, 2), (self.layer4, 4)):  # as their __init__ rewrites the modules
            for name, module in layer.named_modules():
                if "conv2" in name:
                    module.dilation, module.padding, module.stride = (dilation, dilation), (dilation, dilation), (1, 1)
                elif "downsample.0" in name:
                    module.stride = (1, 1)
        features = 32 * w
        self.ppm = nn.Module()
        self.ppm.features = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(b), nn.Conv2d(features, features // len(bins), 1, bias=False),
                          nn.BatchNorm2d(features // len(bins)), nn.ReLU()) for b in bins)
        self.cls = nn.Sequential(nn.Conv2d(2 * features, head, 3, padding=1, bias=False), nn.BatchNorm2d(head),
                                 nn.ReLU(), nn.Dropout2d(0.1), nn.Conv2d(head, classes, 1))
        self.aux = nn.Sequential(nn.Conv2d(16 * w, head // 2, 3, padding=1, bias=False), nn.BatchNorm2d(head // 2),
                                 nn.ReLU(), nn.Dropout2d(0.1), nn.Conv2d(head // 2, classes, 1))

    def forward(self, x):
        size = x.shape[2:]
        x = self.layer2(self.layer1(self.layer0(x)))
        stage3 = self.layer3(x)
        x = self.layer4(stage3)
        pooled = [F.interpolate(m(x), x.shape[2:], mode="bilinear", align_corners=True) for m in self.ppm.features]
        x = torch.cat([x, *pooled], 1)
        logits = F.interpolate(self.cls(x), size, mode="bilinear", align_corners=True)
        aux = F.interpolate(self.aux(stage3), size, mode="bilinear", align_corners=True)
        return logits, aux
