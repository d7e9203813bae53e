"""A PyTorch PSPNet that mirrors mmsegmentation's structure and state-dict keys.

It is the reference for the converter tests and for the CPU benchmark: `PSPNet(...).state_dict()` has the
key layout of an mmsegmentation `pspnet_r50-d8` checkpoint (ResNetV1c / ResNet, PSPHead, FCNHead), and
`forward` computes what mmsegmentation's `EncoderDecoder` computes on a normalised image in eval mode.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

BLOCKS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}


class ConvModule(nn.Module):
    def __init__(self, cin, cout, kernel, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin, planes, stride, dilation, downsample):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, padding=dilation, dilation=dilation, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin, planes, stride, dilation, downsample):
        super().__init__()  # style="pytorch": the stride sits on the 3x3 conv
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        return F.relu(self.bn3(self.conv3(out)) + identity)


class ResNetV1c(nn.Module):
    """mmsegmentation ResNetV1c (deep stem) or ResNet (7x7 stem), strides (1,2,1,1), dilations (1,1,2,4)."""

    def __init__(self, depth=50, deep_stem=True, stem_widths=(32, 32, 64), base_width=64, contract_dilation=True):
        super().__init__()
        block = Bottleneck if depth >= 50 else BasicBlock
        if deep_stem:
            layers, cin = [], 3
            for i, width in enumerate(stem_widths):
                layers += [nn.Conv2d(cin, width, 3, 2 if i == 0 else 1, 1, bias=False), nn.BatchNorm2d(width),
                           nn.ReLU()]
                cin = width
            self.stem = nn.Sequential(*layers)
        else:
            cin = stem_widths[-1]
            self.conv1 = nn.Conv2d(3, cin, 7, 2, 3, bias=False)
            self.bn1 = nn.BatchNorm2d(cin)
        self.deep_stem = deep_stem
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        for i, (blocks, stride, dilation) in enumerate(zip(BLOCKS[depth], (1, 2, 1, 1), (1, 1, 2, 4))):
            planes = base_width * 2**i
            downsample = None
            if stride != 1 or cin != planes * block.expansion:
                downsample = nn.Sequential(nn.Conv2d(cin, planes * block.expansion, 1, stride, bias=False),
                                           nn.BatchNorm2d(planes * block.expansion))
            first = dilation // 2 if contract_dilation and dilation > 1 else dilation
            layers = [block(cin, planes, stride, first, downsample)]
            cin = planes * block.expansion
            layers += [block(cin, planes, 1, dilation, None) for _ in range(blocks - 1)]
            self.add_module(f"layer{i + 1}", nn.Sequential(*layers))

    def forward(self, x):
        x = self.stem(x) if self.deep_stem else F.relu(self.bn1(self.conv1(x)))
        x = self.maxpool(x)
        outs = []
        for i in range(1, 5):
            x = getattr(self, f"layer{i}")(x)
            outs.append(x)
        return outs


def resize(x, size):
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class PSPHead(nn.Module):
    def __init__(self, cin, channels, num_classes, pool_scales=(1, 2, 3, 6)):
        super().__init__()
        self.psp_modules = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(s), ConvModule(cin, channels, 1)) for s in pool_scales
        )
        self.bottleneck = ConvModule(cin + len(pool_scales) * channels, channels, 3, padding=1)
        self.dropout = nn.Dropout2d(0.1)
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)

    def forward(self, x):
        outs = [x] + [resize(m(x), x.shape[2:]) for m in self.psp_modules]
        return self.conv_seg(self.dropout(self.bottleneck(torch.cat(outs, dim=1))))


class FCNHead(nn.Module):
    def __init__(self, cin, channels, num_classes):
        super().__init__()
        self.convs = nn.Sequential(ConvModule(cin, channels, 3, padding=1))
        self.dropout = nn.Dropout2d(0.1)
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)

    def forward(self, x):
        return self.conv_seg(self.dropout(self.convs(x)))


class PSPNet(nn.Module):
    """mmsegmentation's EncoderDecoder with PSPHead and FCNHead; returns logits at the input size."""

    def __init__(self, num_classes, depth=50, deep_stem=True, stem_widths=(32, 32, 64), base_width=64,
                 channels=512, aux_channels=256, pool_scales=(1, 2, 3, 6)):
        super().__init__()
        self.backbone = ResNetV1c(depth, deep_stem, stem_widths, base_width)
        expansion = 4 if depth >= 50 else 1
        self.decode_head = PSPHead(base_width * 8 * expansion, channels, num_classes, pool_scales)
        self.auxiliary_head = FCNHead(base_width * 4 * expansion, aux_channels, num_classes)

    def forward(self, x, aux=True):
        stages = self.backbone(x)
        logits = resize(self.decode_head(stages[3]), x.shape[2:])
        if not aux:  # inference, as mmsegmentation's EncoderDecoder.inference
            return logits
        return logits, resize(self.auxiliary_head(stages[2]), x.shape[2:])


def randomize_batchnorm(model: nn.Module, seed: int = 0) -> None:
    """Gives every BN layer random affine parameters and running statistics (as a trained net has)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                n = module.num_features
                module.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(n, generator=generator) * 0.1)
                module.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
                module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
