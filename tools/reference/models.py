"""PyTorch reference models for yolo-rs.

Where each piece comes from:

* ``_make_divisible``, ``ConvBNReLU``, ``InvertedResidual``, ``MobileNetV2``
  (the classifier network), ``mobilenet_v2``, the backbone wrapper class
  ``MobileNetV2`` (here named ``MobileNetV2Backbone``), ``conv2d``,
  ``make_last_layers`` and ``YoloBody``: the seed text
  ``/work/shared/seed/000_9033e2a8c0c52b71.txt`` (a Chinese blog post whose
  Python lost its indentation; restored here, comments translated). The
  MobileNetV2 part is the torchvision implementation; the YOLO part follows
  bubbliiiing/yolo3-pytorch ``nets/yolo.py`` (with a MobileNetV2 option from
  bubbliiiing/mobilenet-yolov4-pytorch).
* ``BasicBlock``, ``DarkNet``, ``darknet53``: bubbliiiing/yolo3-pytorch
  ``nets/darknet.py`` (commit 8fbb81d3377b7a404c8634ad26ff3f1193da2cad).

Differences from the originals, none of which changes the state_dict or the
forward pass:

* the pretrained-weight download of ``mobilenet_v2`` is dropped (no network);
* the two classes named ``MobileNetV2`` in the seed live in two different
  modules there; here the backbone wrapper is ``MobileNetV2Backbone``
  (state_dict keys are unchanged: ``model.features.*`` / ``model.classifier.*``);
* the random weight initialisations are kept (they are overwritten by the
  deterministic weights in ``make_golden.py`` anyway).
"""

import math
from collections import OrderedDict

import torch
from torch import nn


# ---------------------------------------------------------------------------
# MobileNetV2 (seed, section 3; torchvision implementation)
# ---------------------------------------------------------------------------

def _make_divisible(v, divisor, min_value=None):
    """Round a channel count so that it is divisible by ``divisor`` (8)."""
    if min_value is None:
        min_value = divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    # Make sure that round down does not go down by more than 10%.
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


class ConvBNReLU(nn.Sequential):
    """Conv (no bias) + BN + ReLU6. Arguments: in channels, out channels, ..."""

    def __init__(self, in_planes, out_planes, kernel_size=3, stride=1, groups=1):
        padding = (kernel_size - 1) // 2
        super(ConvBNReLU, self).__init__(
            nn.Conv2d(in_planes, out_planes, kernel_size, stride, padding, groups=groups, bias=False),
            nn.BatchNorm2d(out_planes),
            nn.ReLU6(inplace=True),
        )


class InvertedResidual(nn.Module):
    """Inverted residual: expand (1x1), depthwise (3x3), project (1x1, linear).

    Arguments: input channels, output channels, stride, expansion ratio.
    """

    def __init__(self, inp, oup, stride, expand_ratio):
        super(InvertedResidual, self).__init__()
        self.stride = stride
        assert stride in [1, 2]
        # the hidden dimension is input channels * expansion ratio
        hidden_dim = int(round(inp * expand_ratio))
        self.use_res_connect = self.stride == 1 and inp == oup

        layers = []
        if expand_ratio != 1:
            layers.append(ConvBNReLU(inp, hidden_dim, kernel_size=1))  # pointwise
        layers.extend([
            ConvBNReLU(hidden_dim, hidden_dim, stride=stride, groups=hidden_dim),  # depthwise
            nn.Conv2d(hidden_dim, oup, 1, 1, 0, bias=False),  # pointwise-linear
            nn.BatchNorm2d(oup),
        ])
        self.conv = nn.Sequential(*layers)

    def forward(self, x):
        if self.use_res_connect:
            return x + self.conv(x)
        else:
            return self.conv(x)


class MobileNetV2(nn.Module):
    def __init__(self, num_classes=1000, width_mult=1.0, inverted_residual_setting=None, round_nearest=8):
        """
        MobileNet V2 main class

        Args:
            num_classes (int): Number of classes
            width_mult (float): Width multiplier - adjusts number of channels in each layer by this amount
            inverted_residual_setting: Network structure
            round_nearest (int): Round the number of channels in each layer to be a multiple of this number
            Set to 1 to turn off rounding
        """
        super(MobileNetV2, self).__init__()
        block = InvertedResidual
        input_channel = 32
        last_channel = 1280

        if inverted_residual_setting is None:
            inverted_residual_setting = [
                # t, c, n, s
                # 208,208,32 -> 208,208,16
                [1, 16, 1, 1],
                # 208,208,16 -> 104,104,24
                [6, 24, 2, 2],
                # 104,104,24 -> 52,52,32
                [6, 32, 3, 2],
                # 52,52,32 -> 26,26,64
                [6, 64, 4, 2],
                # 26,26,64 -> 26,26,96
                [6, 96, 3, 1],
                # 26,26,96 -> 13,13,160
                [6, 160, 3, 2],
                # 13,13,160 -> 13,13,320
                [6, 320, 1, 1],
            ]

        # only check the first element, assuming user knows t,c,n,s are required
        if len(inverted_residual_setting) == 0 or len(inverted_residual_setting[0]) != 4:
            raise ValueError("inverted_residual_setting should be non-empty "
                             "or a 4-element list, got {}".format(inverted_residual_setting))

        # building first layer
        input_channel = _make_divisible(input_channel * width_mult, round_nearest)
        self.last_channel = _make_divisible(last_channel * max(1.0, width_mult), round_nearest)
        # 416,416,3 -> 208,208,32
        features = [ConvBNReLU(3, input_channel, stride=2)]
        # building inverted residual blocks
        for t, c, n, s in inverted_residual_setting:
            output_channel = _make_divisible(c * width_mult, round_nearest)
            for i in range(n):
                stride = s if i == 0 else 1
                # block is the InvertedResidual class above
                features.append(block(input_channel, output_channel, stride, expand_ratio=t))
                input_channel = output_channel
        # building last several layers
        features.append(ConvBNReLU(input_channel, self.last_channel, kernel_size=1))
        # make it nn.Sequential
        self.features = nn.Sequential(*features)

        # building classifier
        self.classifier = nn.Sequential(
            nn.Dropout(0.2),
            nn.Linear(self.last_channel, num_classes),
        )

        # weight initialization
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode='fan_out')
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        x = self.features(x)
        x = x.mean([2, 3])  # global average pool over H and W
        x = self.classifier(x)
        return x


def mobilenet_v2(pretrained=False, progress=True):
    # The seed downloads torchvision's ImageNet weights when pretrained=True;
    # not supported here (no network, and fixtures use synthetic weights).
    if pretrained:
        raise NotImplementedError("pretrained weights are not used by the reference script")
    model = MobileNetV2()
    return model


# ---------------------------------------------------------------------------
# DarkNet-53 (bubbliiiing/yolo3-pytorch nets/darknet.py)
# ---------------------------------------------------------------------------

class BasicBlock(nn.Module):
    """Residual block: 1x1 conv reduces channels, 3x3 conv restores them,
    then the residual edge is added."""

    def __init__(self, inplanes, planes):
        super(BasicBlock, self).__init__()
        self.conv1 = nn.Conv2d(inplanes, planes[0], kernel_size=1, stride=1, padding=0, bias=False)
        self.bn1 = nn.BatchNorm2d(planes[0])
        self.relu1 = nn.LeakyReLU(0.1)

        self.conv2 = nn.Conv2d(planes[0], planes[1], kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes[1])
        self.relu2 = nn.LeakyReLU(0.1)

    def forward(self, x):
        residual = x

        out = self.conv1(x)
        out = self.bn1(out)
        out = self.relu1(out)

        out = self.conv2(out)
        out = self.bn2(out)
        out = self.relu2(out)

        out += residual
        return out


class DarkNet(nn.Module):
    def __init__(self, layers):
        super(DarkNet, self).__init__()
        self.inplanes = 32
        # 416,416,3 -> 416,416,32
        self.conv1 = nn.Conv2d(3, self.inplanes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(self.inplanes)
        self.relu1 = nn.LeakyReLU(0.1)

        # 416,416,32 -> 208,208,64
        self.layer1 = self._make_layer([32, 64], layers[0])
        # 208,208,64 -> 104,104,128
        self.layer2 = self._make_layer([64, 128], layers[1])
        # 104,104,128 -> 52,52,256
        self.layer3 = self._make_layer([128, 256], layers[2])
        # 52,52,256 -> 26,26,512
        self.layer4 = self._make_layer([256, 512], layers[3])
        # 26,26,512 -> 13,13,1024
        self.layer5 = self._make_layer([512, 1024], layers[4])

        self.layers_out_filters = [64, 128, 256, 512, 1024]

        # weight initialisation
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                m.weight.data.normal_(0, math.sqrt(2. / n))
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.data.fill_(1)
                m.bias.data.zero_()

    # In each layer: first a 3x3 stride-2 convolution for downsampling,
    # then a stack of residual blocks.
    def _make_layer(self, planes, blocks):
        layers = []
        # downsampling, stride 2, kernel 3
        layers.append(("ds_conv", nn.Conv2d(self.inplanes, planes[1], kernel_size=3,
                                            stride=2, padding=1, bias=False)))
        layers.append(("ds_bn", nn.BatchNorm2d(planes[1])))
        layers.append(("ds_relu", nn.LeakyReLU(0.1)))
        # residual blocks
        self.inplanes = planes[1]
        for i in range(0, blocks):
            layers.append(("residual_{}".format(i), BasicBlock(self.inplanes, planes)))
        return nn.Sequential(OrderedDict(layers))

    def forward(self, x):
        x = self.conv1(x)
        x = self.bn1(x)
        x = self.relu1(x)

        x = self.layer1(x)
        x = self.layer2(x)
        out3 = self.layer3(x)
        out4 = self.layer4(out3)
        out5 = self.layer5(out4)

        return out3, out4, out5


def darknet53(pretrained=False, **kwargs):
    model = DarkNet([1, 2, 8, 8, 4])
    if pretrained:
        if isinstance(pretrained, str):
            model.load_state_dict(torch.load(pretrained))
        else:
            raise Exception("darknet request a pretrained path. got [{}]".format(pretrained))
    return model


# ---------------------------------------------------------------------------
# YOLOv3 (seed, section 4)
# ---------------------------------------------------------------------------

class MobileNetV2Backbone(nn.Module):
    """The seed's backbone wrapper (called ``MobileNetV2`` there).

    ``model.features`` is indexed like a list to take three feature maps:
    out3 = features[:7], out4 = features[7:14], out5 = features[14:18].
    ``features[18]`` (1x1 conv to 1280) and ``classifier`` stay in the
    state_dict but are not used by the forward pass.
    """

    def __init__(self, pretrained=False):
        super(MobileNetV2Backbone, self).__init__()
        self.model = mobilenet_v2(pretrained=pretrained)

    def forward(self, x):
        out3 = self.model.features[:7](x)
        out4 = self.model.features[7:14](out3)
        out5 = self.model.features[14:18](out4)
        return out3, out4, out5


def conv2d(filter_in, filter_out, kernel_size):
    """Conv (no bias) + BN + LeakyReLU(0.1), 'same' padding, stride 1."""
    pad = (kernel_size - 1) // 2 if kernel_size else 0
    return nn.Sequential(OrderedDict([
        ("conv", nn.Conv2d(filter_in, filter_out, kernel_size=kernel_size, stride=1, padding=pad, bias=False)),
        ("bn", nn.BatchNorm2d(filter_out)),
        ("relu", nn.LeakyReLU(0.1)),
    ]))


def make_last_layers(filters_list, in_filters, out_filter):
    """Seven convolutions: the first five extract features (their output also
    feeds the next, finer scale); the last two are the YOLO head."""
    m = nn.Sequential(
        conv2d(in_filters, filters_list[0], 1),
        conv2d(filters_list[0], filters_list[1], 3),
        conv2d(filters_list[1], filters_list[0], 1),
        conv2d(filters_list[0], filters_list[1], 3),
        conv2d(filters_list[1], filters_list[0], 1),
        conv2d(filters_list[0], filters_list[1], 3),
        nn.Conv2d(filters_list[1], out_filter, kernel_size=1, stride=1, padding=0, bias=True),
    )
    return m


class YoloBody(nn.Module):
    def __init__(self, anchors_mask, num_classes, backbone="mobilenetv2"):
        super(YoloBody, self).__init__()
        # darknet53 gives three feature maps: 52,52,256; 26,26,512; 13,13,1024
        if backbone == "darknet53":
            self.backbone = darknet53()
            in_filters = [256, 512, 1024]
        elif backbone == "mobilenetv2":
            # 52,52,32; 26,26,96; 13,13,320
            self.backbone = MobileNetV2Backbone(pretrained=False)
            in_filters = [32, 96, 320]
        else:
            raise ValueError('Unsupported backbone - `{}`, Use darknet53, mobilenetv2.'.format(backbone))

        out_filters = in_filters

        # head output channels: len(anchors_mask[i]) * (num_classes + 5),
        # i.e. 3 * (20 + 5) = 75 for VOC, 3 * (80 + 5) = 255 for COCO
        # (4 box parameters + 1 objectness + num_classes class scores per anchor)
        self.last_layer0 = make_last_layers([512, 1024], out_filters[-1], len(anchors_mask[0]) * (num_classes + 5))

        self.last_layer1_conv = conv2d(512, 256, 1)
        self.last_layer1_upsample = nn.Upsample(scale_factor=2, mode='nearest')
        self.last_layer1 = make_last_layers([256, 512], out_filters[-2] + 256, len(anchors_mask[1]) * (num_classes + 5))

        self.last_layer2_conv = conv2d(256, 128, 1)
        self.last_layer2_upsample = nn.Upsample(scale_factor=2, mode='nearest')
        self.last_layer2 = make_last_layers([128, 256], out_filters[-3] + 128, len(anchors_mask[2]) * (num_classes + 5))

    def forward(self, x):
        # three feature maps (416 input): 52,52,256; 26,26,512; 13,13,1024
        x2, x1, x0 = self.backbone(x)

        # first scale, out0 = (batch_size, 3*(5+nc), 13, 13)
        # the first five convs of last_layer0 give the branch that feeds the
        # next scale; the remaining two give the head output
        out0_branch = self.last_layer0[:5](x0)
        out0 = self.last_layer0[5:](out0_branch)

        # 13,13,512 -> 13,13,256 -> 26,26,256
        x1_in = self.last_layer1_conv(out0_branch)
        x1_in = self.last_layer1_upsample(x1_in)
        # 26,26,256 + 26,26,512 -> 26,26,768 (channel concat, upsampled first)
        x1_in = torch.cat([x1_in, x1], 1)

        # second scale, out1 = (batch_size, 3*(5+nc), 26, 26)
        out1_branch = self.last_layer1[:5](x1_in)
        out1 = self.last_layer1[5:](out1_branch)

        # 26,26,256 -> 26,26,128 -> 52,52,128
        x2_in = self.last_layer2_conv(out1_branch)
        x2_in = self.last_layer2_upsample(x2_in)
        # 52,52,128 + 52,52,256 -> 52,52,384
        x2_in = torch.cat([x2_in, x2], 1)

        # third scale, out2 = (batch_size, 3*(5+nc), 52, 52)
        out2 = self.last_layer2(x2_in)
        return out0, out1, out2
