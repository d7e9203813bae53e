"""A PyTorch PSPNet that mirrors mmsegmentation's structure and state-dict keys.

It is the reference for the converter tests and for the CPU benchmark: `PSPNet(...).state_dict()` has the
key layout of an mmsegmentation `pspnet_*` checkpoint (ResNetV1c / ResNet / MobileNetV2, PSPHead, FCNHead),
and `forward` computes what mmsegmentation's `EncoderDecoder` computes on a normalised image in eval mode.
Checked against mmsegmentation 1.2.2 itself (the models built from its configs): same keys, same logits.
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
    """mmsegmentation ResNetV1c (deep stem) or ResNet (7x7 stem, "V1b"); -d8: strides (1,2,1,1), dilations
    (1,1,2,4); -d32: strides (1,2,2,2) and still dilations (1,1,2,4)."""

    def __init__(self, depth=50, deep_stem=True, stem_widths=(32, 32, 64), base_width=64, contract_dilation=True,
                 strides=(1, 2, 1, 1), dilations=(1, 1, 2, 4)):
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
        for i, (blocks, stride, dilation) in enumerate(zip(BLOCKS[depth], strides, dilations)):
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


def make_divisible(value, divisor=8, min_ratio=0.9):
    new_value = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return new_value + divisor if new_value < min_ratio * value else new_value


class ConvModule6(nn.Module):
    """mmcv ConvModule with ReLU6 (or no activation): conv (no bias), bn."""

    def __init__(self, cin, cout, kernel, stride=1, padding=0, dilation=1, groups=1, act=True):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, padding, dilation, groups, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.act = act

    def forward(self, x):
        x = self.bn(self.conv(x))
        return F.relu6(x) if self.act else x


class InvertedResidual(nn.Module):
    def __init__(self, cin, cout, stride, expand_ratio, dilation):
        super().__init__()
        self.use_res_connect = stride == 1 and cin == cout
        hidden = int(round(cin * expand_ratio))
        layers = [ConvModule6(cin, hidden, 1)] if expand_ratio != 1 else []
        layers += [ConvModule6(hidden, hidden, 3, stride, dilation, dilation, groups=hidden),
                   ConvModule6(hidden, cout, 1, act=False)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(nn.Module):
    """mmsegmentation's MobileNetV2 (-d8: strides (1,2,2,1,1,1,1), dilations (1,1,1,2,2,4,4), of which only
    the first block of each layer takes the dilation); returns layers 2, 3, 5 and 7 (out_indices 1,2,4,6)."""

    arch = ((1, 16, 1), (6, 24, 2), (6, 32, 3), (6, 64, 4), (6, 96, 3), (6, 160, 3), (6, 320, 1))

    def __init__(self, widen_factor=1.0, strides=(1, 2, 2, 1, 1, 1, 1), dilations=(1, 1, 1, 2, 2, 4, 4)):
        super().__init__()
        cin = make_divisible(32 * widen_factor)
        self.conv1 = ConvModule6(3, cin, 3, 2, 1)
        for i, ((expand, channels, blocks), stride, dilation) in enumerate(zip(self.arch, strides, dilations)):
            cout = make_divisible(channels * widen_factor)
            layers = []
            for j in range(blocks):
                layers.append(InvertedResidual(cin, cout, stride if j == 0 else 1, expand, dilation if j == 0 else 1))
                cin = cout
            self.add_module(f"layer{i + 1}", nn.Sequential(*layers))

    def forward(self, x):
        x = self.conv1(x)
        outs = []
        for i in range(1, 8):
            x = getattr(self, f"layer{i}")(x)
            if i in (2, 3, 5, 7):
                outs.append(x)
        return outs


def resize(x, size, align_corners=False):
    return F.interpolate(x, size=size, mode="bilinear", align_corners=align_corners)


class PSPHead(nn.Module):
    def __init__(self, cin, channels, num_classes, pool_scales=(1, 2, 3, 6), align_corners=False):
        super().__init__()
        self.align_corners = align_corners
        self.psp_modules = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(s), ConvModule(cin, channels, 1)) for s in pool_scales
        )
        self.bottleneck = ConvModule(cin + len(pool_scales) * channels, channels, 3, padding=1)
        self.dropout = nn.Dropout2d(0.1)
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)

    def forward(self, x):
        outs = [x] + [resize(m(x), x.shape[2:], self.align_corners) for m in self.psp_modules]
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
    """mmsegmentation's EncoderDecoder with PSPHead and FCNHead; returns logits at the input size.

    depth 18-152: ResNetV1c (deep_stem) or ResNet; depth "mobilenet_v2": MobileNetV2 (widen_factor).
    `output_stride` 8 ("-d8") or 32 ("-d32", ResNets only: its configs keep dilations (1, 1, 2, 4)).
    """

    def __init__(self, num_classes, depth=50, deep_stem=True, stem_widths=(32, 32, 64), base_width=64,
                 channels=512, aux_channels=256, pool_scales=(1, 2, 3, 6), align_corners=False, output_stride=8,
                 widen_factor=1.0, contract_dilation=True):
        super().__init__()
        self.align_corners = align_corners
        if depth == "mobilenet_v2":
            self.backbone = MobileNetV2(widen_factor)
            final, aux_in = make_divisible(320 * widen_factor), make_divisible(96 * widen_factor)
        else:
            plan = {8: ((1, 2, 1, 1), (1, 1, 2, 4)), 32: ((1, 2, 2, 2), (1, 1, 2, 4))}[output_stride]
            self.backbone = ResNetV1c(depth, deep_stem, stem_widths, base_width, contract_dilation, *plan)
            expansion = 4 if depth >= 50 else 1
            final, aux_in = base_width * 8 * expansion, base_width * 4 * expansion
        self.decode_head = PSPHead(final, channels, num_classes, pool_scales, align_corners)
        self.auxiliary_head = FCNHead(aux_in, aux_channels, num_classes)

    def forward(self, x, aux=True):
        stages = self.backbone(x)
        logits = resize(self.decode_head(stages[3]), x.shape[2:], self.align_corners)
        if not aux:  # inference, as mmsegmentation's EncoderDecoder.inference
            return logits
        return logits, resize(self.auxiliary_head(stages[2]), x.shape[2:], self.align_corners)


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
