"""The YOLOv7 network of ``cfg/training/yolov7.yaml`` and ``cfg/deploy/yolov7.yaml``, written from
its published architecture, in the three forms users hold.

Layer indices and attribute names follow the official model, so an official state dict
(``model.<index>.<attribute>``) loads with ``strict=True``. With 80 classes:

=========  =================================  =========================  ========  ==========
form       config                             head                       entries   parameters
=========  =================================  =========================  ========  ==========
training   ``cfg/training/yolov7.yaml``       ``IDetect`` (``ia``/``im``)     566   37,622,682
deploy     ``cfg/deploy/yolov7.yaml``         ``Detect``                      560   37,620,125
fused      deploy (or training) + ``fuse()``  ``Detect``, Conv+BN merged,     186   36,905,341
                                              RepConv -> ``rbr_reparam``
=========  =================================  =========================  ========  ==========

The forward pass also returns the output of ``SPPCSPC`` (layer 51, ``[B, 512, H/32, W/32]``),
the feature map of the ROI appearance encoder. :meth:`YOLOv7.fuse` turns a training or deploy
network into the fused form in place (same outputs up to fp32 rounding).

The graph is built from short generators of rows ``(inputs, module)``: ``inputs`` is -1
(previous layer), a negative offset or an absolute layer index, or a list of them for Concat.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from myutils.cli import InputError

SPPCSPC_LAYER = 51
DETECT_LAYER = 105
DEFAULT_ANCHORS = ((12, 16, 19, 36, 40, 28), (36, 75, 76, 55, 72, 146), (142, 110, 192, 243, 459, 401))
STRIDES = (8, 16, 32)
# YOLOv7 trains with these BatchNorm settings; real weights assume eps=1e-3 at inference
BN_EPS, BN_MOMENTUM = 1e-3, 0.03
FORMS = ("training", "deploy", "fused")


def _batchnorm(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


def fold_batchnorm(weight: torch.Tensor, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Kernel and bias of ``bn(conv(x))`` for a bias-free conv with ``weight`` (BatchNorm in eval mode)."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return weight * scale.view(-1, 1, 1, 1), bn.bias - bn.running_mean * scale


class Conv(nn.Module):
    """Conv2d (no bias) + BatchNorm2d + SiLU, 'same' padding for odd kernels.

    Fused form (``fused=True`` or after :meth:`fuse`): one Conv2d with bias, no ``bn``.
    """

    def __init__(self, c_in: int, c_out: int, kernel: int = 1, stride: int = 1, fused: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, bias=fused)
        self.bn = None if fused else _batchnorm(c_out)
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        return self.act(x if self.bn is None else self.bn(x))

    @torch.no_grad()
    def fuse(self) -> None:
        if self.bn is None:
            return
        conv = self.conv
        fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                          bias=True).to(conv.weight)
        weight, bias = fold_batchnorm(conv.weight, self.bn)
        fused.weight.copy_(weight)
        fused.bias.copy_(bias)
        self.conv, self.bn = fused, None


class MP(nn.Module):
    """2x2 max-pool with stride 2 (the downsampling branch of the transition blocks)."""

    def __init__(self):
        super().__init__()
        self.m = nn.MaxPool2d(kernel_size=2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.m(x)


class Concat(nn.Module):
    def forward(self, xs: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(xs, dim=1)


class SPPCSPC(nn.Module):
    """Spatial pyramid pooling (max-pools 5, 9, 13) inside a cross-stage-partial block."""

    def __init__(self, c_in: int, c_out: int = 512, pool_sizes: tuple[int, ...] = (5, 9, 13), fused: bool = False):
        super().__init__()
        c_ = c_out
        self.cv1 = Conv(c_in, c_, 1, fused=fused)
        self.cv2 = Conv(c_in, c_, 1, fused=fused)
        self.cv3 = Conv(c_, c_, 3, fused=fused)
        self.cv4 = Conv(c_, c_, 1, fused=fused)
        self.m = nn.ModuleList(nn.MaxPool2d(kernel_size=k, stride=1, padding=k // 2) for k in pool_sizes)
        self.cv5 = Conv((len(pool_sizes) + 1) * c_, c_, 1, fused=fused)
        self.cv6 = Conv(c_, c_, 3, fused=fused)
        self.cv7 = Conv(2 * c_, c_out, 1, fused=fused)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.cv4(self.cv3(self.cv1(x)))
        y1 = self.cv6(self.cv5(torch.cat([x1, *(pool(x1) for pool in self.m)], dim=1)))
        return self.cv7(torch.cat([y1, self.cv2(x)], dim=1))


class RepConv(nn.Module):
    """Re-parameterisable 3x3 conv: SiLU(3x3 conv-BN + 1x1 conv-BN [+ BN identity]).

    Fused form (``fused=True`` or after :meth:`fuse`): SiLU(``rbr_reparam``), one 3x3 conv with bias.
    """

    def __init__(self, c_in: int, c_out: int, stride: int = 1, fused: bool = False):
        super().__init__()
        self.act = nn.SiLU()
        if fused:
            self.rbr_reparam = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=True)
            return
        self.rbr_identity = _batchnorm(c_in) if c_in == c_out and stride == 1 else None
        self.rbr_dense = nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), _batchnorm(c_out))
        self.rbr_1x1 = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, 0, bias=False), _batchnorm(c_out))

    @property
    def fused(self) -> bool:
        return hasattr(self, "rbr_reparam")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused:
            return self.act(self.rbr_reparam(x))
        identity = self.rbr_identity(x) if self.rbr_identity is not None else 0
        return self.act(self.rbr_dense(x) + self.rbr_1x1(x) + identity)

    @torch.no_grad()
    def fuse(self) -> None:
        """One 3x3 kernel: the dense branch, the 1x1 branch padded to 3x3 and the identity as a 3x3 kernel."""
        if self.fused:
            return
        dense = self.rbr_dense[0]
        kernel, bias = fold_batchnorm(dense.weight, self.rbr_dense[1])
        kernel_1x1, bias_1x1 = fold_batchnorm(self.rbr_1x1[0].weight, self.rbr_1x1[1])
        kernel, bias = kernel + F.pad(kernel_1x1, [1, 1, 1, 1]), bias + bias_1x1
        if self.rbr_identity is not None:
            channels = dense.in_channels
            identity = torch.zeros_like(dense.weight)
            identity[torch.arange(channels), torch.arange(channels), 1, 1] = 1.0
            kernel_id, bias_id = fold_batchnorm(identity, self.rbr_identity)
            kernel, bias = kernel + kernel_id, bias + bias_id
        self.rbr_reparam = nn.Conv2d(dense.in_channels, dense.out_channels, 3, dense.stride, 1, bias=True).to(kernel)
        self.rbr_reparam.weight.copy_(kernel)
        self.rbr_reparam.bias.copy_(bias)
        del self.rbr_dense, self.rbr_1x1, self.rbr_identity


class ImplicitA(nn.Module):
    """A learned per-channel offset added to the input (YOLOR implicit knowledge)."""

    def __init__(self, channels: int):
        super().__init__()
        self.implicit = nn.Parameter(torch.zeros(1, channels, 1, 1))
        nn.init.normal_(self.implicit, mean=0.0, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.implicit + x


class ImplicitM(nn.Module):
    """A learned per-channel scale multiplied with the input."""

    def __init__(self, channels: int):
        super().__init__()
        self.implicit = nn.Parameter(torch.ones(1, channels, 1, 1))
        nn.init.normal_(self.implicit, mean=1.0, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.implicit * x


class Detect(nn.Module):
    """Detection head over three scales (the deploy and fused forms).

    ``anchors`` are stored in units of each level's stride, ``anchor_grid`` in pixels (as in the
    official checkpoints). Training mode returns the raw maps ``[B, na, ny, nx, 5 + nc]`` per level;
    eval mode returns decoded boxes ``[B, sum(na*ny*nx), 5 + nc]`` (cx, cy, w, h in input pixels,
    objectness, class probabilities).
    """

    def __init__(self, num_classes: int, anchors=DEFAULT_ANCHORS, channels=(256, 512, 1024), strides=STRIDES):
        super().__init__()
        self.num_classes = num_classes
        self.num_outputs = num_classes + 5
        self.num_levels = len(anchors)
        self.num_anchors = len(anchors[0]) // 2
        anchor_pixels = torch.tensor(anchors, dtype=torch.float32).view(self.num_levels, -1, 2)
        stride = torch.tensor(strides, dtype=torch.float32)
        self.register_buffer("stride", stride, persistent=False)
        self.register_buffer("anchors", anchor_pixels / stride.view(-1, 1, 1))
        self.register_buffer("anchor_grid", anchor_pixels.clone().view(self.num_levels, 1, -1, 1, 1, 2))
        self.m = nn.ModuleList(nn.Conv2d(c, self.num_outputs * self.num_anchors, 1) for c in channels)
        self._init_biases()

    def _init_biases(self) -> None:
        """Objectness and class priors (about 8 objects per 640 image, uniform classes)."""
        for conv, stride in zip(self.m, STRIDES, strict=True):
            bias = conv.bias.detach().view(self.num_anchors, -1)
            bias[:, 4] += math.log(8 / (640 / stride) ** 2)
            bias[:, 5:] += math.log(0.6 / (self.num_classes - 0.99))

    def level_output(self, x: torch.Tensor, level: int) -> torch.Tensor:
        return self.m[level](x)

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor] | torch.Tensor:
        raw, decoded = [], []
        for level, x in enumerate(xs):
            y = self.level_output(x, level)
            batch, _, ny, nx = y.shape
            y = y.view(batch, self.num_anchors, self.num_outputs, ny, nx).permute(0, 1, 3, 4, 2).contiguous()
            raw.append(y)
            if not self.training:
                decoded.append(self._decode(y, level))
        return raw if self.training else torch.cat(decoded, dim=1)

    def _decode(self, y: torch.Tensor, level: int) -> torch.Tensor:
        batch, _, ny, nx, _ = y.shape
        gy, gx = torch.meshgrid(torch.arange(ny, device=y.device), torch.arange(nx, device=y.device), indexing="ij")
        grid = torch.stack((gx, gy), dim=-1).view(1, 1, ny, nx, 2).to(y.dtype)
        y = y.sigmoid()
        xy = (y[..., 0:2] * 2.0 - 0.5 + grid) * self.stride[level].to(y.dtype)
        wh = (y[..., 2:4] * 2) ** 2 * self.anchor_grid[level].to(y.dtype)
        return torch.cat([xy, wh, y[..., 4:]], dim=-1).view(batch, -1, self.num_outputs)


class IDetect(Detect):
    """The training form's head: ``ImplicitM(conv(ImplicitA(x)))`` per level."""

    def __init__(self, num_classes: int, anchors=DEFAULT_ANCHORS, channels=(256, 512, 1024), strides=STRIDES):
        super().__init__(num_classes, anchors, channels, strides)
        self.ia = nn.ModuleList(ImplicitA(c) for c in channels)
        self.im = nn.ModuleList(ImplicitM(self.num_outputs * self.num_anchors) for _ in channels)

    def level_output(self, x: torch.Tensor, level: int) -> torch.Tensor:
        return self.im[level](self.m[level](self.ia[level](x)))

    @torch.no_grad()
    def fused(self) -> Detect:
        """A plain :class:`Detect` with the implicit layers folded into its convs.

        ``m * (W (x + a) + b) = (m W) x + m (b + W a)`` per level.
        """
        channels = tuple(conv.in_channels for conv in self.m)
        anchors = tuple(tuple((grid.flatten()).tolist()) for grid in self.anchor_grid)
        detect = Detect(self.num_classes, anchors, channels, tuple(self.stride.tolist())).to(self.anchors)
        for conv, target, offset, scale in zip(self.m, detect.m, self.ia, self.im, strict=True):
            weight = conv.weight.flatten(1)
            bias = conv.bias + weight @ offset.implicit.flatten()
            target.weight.copy_(conv.weight * scale.implicit.view(-1, 1, 1, 1))
            target.bias.copy_(bias * scale.implicit.flatten())
        return detect


# ---- the layer table -------------------------------------------------------------------------


def _stem():
    yield -1, ("conv", 32, 3, 1)
    yield -1, ("conv", 64, 3, 2)
    yield -1, ("conv", 64, 3, 1)
    yield -1, ("conv", 128, 3, 2)


def _backbone_elan(width: int, out: int):
    """ELAN of the backbone: two 1x1 branches, four stacked 3x3, concat of 4 taps, 1x1 fuse."""
    yield -1, ("conv", width, 1, 1)
    yield -2, ("conv", width, 1, 1)
    for _ in range(4):
        yield -1, ("conv", width, 3, 1)
    yield [-1, -3, -5, -6], ("concat",)
    yield -1, ("conv", out, 1, 1)


def _head_elan(width: int, inner: int, out: int):
    """ELAN-W of the head: as the backbone's, but concatenating all six taps."""
    yield -1, ("conv", width, 1, 1)
    yield -2, ("conv", width, 1, 1)
    for _ in range(4):
        yield -1, ("conv", inner, 3, 1)
    yield [-1, -2, -3, -4, -5, -6], ("concat",)
    yield -1, ("conv", out, 1, 1)


def _downsample(width: int, extra_input: int | None = None):
    """Transition: max-pool branch and strided 3x3 branch, concatenated (plus a lateral input)."""
    yield -1, ("mp",)
    yield -1, ("conv", width, 1, 1)
    yield -3, ("conv", width, 1, 1)
    yield -1, ("conv", width, 3, 2)
    yield [-1, -3] + ([extra_input] if extra_input is not None else []), ("concat",)


def _upsample_merge(width: int, lateral: int):
    yield -1, ("conv", width, 1, 1)
    yield -1, ("upsample",)
    yield lateral, ("conv", width, 1, 1)
    yield [-1, -2], ("concat",)


def yolov7_layers(num_classes: int):
    """Rows ``(inputs, spec)`` of layers 0..105 in order."""
    yield from _stem()  # 0-3
    yield from _backbone_elan(64, 256)  # 4-11
    yield from _downsample(128)  # 12-16
    yield from _backbone_elan(128, 512)  # 17-24 (P3 route)
    yield from _downsample(256)  # 25-29
    yield from _backbone_elan(256, 1024)  # 30-37 (P4 route)
    yield from _downsample(512)  # 38-42
    yield from _backbone_elan(256, 1024)  # 43-50
    yield -1, ("sppcspc", 512)  # 51
    yield from _upsample_merge(256, 37)  # 52-55
    yield from _head_elan(256, 128, 256)  # 56-63
    yield from _upsample_merge(128, 24)  # 64-67
    yield from _head_elan(128, 64, 128)  # 68-75
    yield from _downsample(128, extra_input=63)  # 76-80
    yield from _head_elan(256, 128, 256)  # 81-88
    yield from _downsample(256, extra_input=51)  # 89-93
    yield from _head_elan(512, 256, 512)  # 94-101
    yield 75, ("repconv", 256)  # 102
    yield 88, ("repconv", 512)  # 103
    yield 101, ("repconv", 1024)  # 104
    yield [102, 103, 104], ("detect", num_classes)  # 105


@dataclass(frozen=True)
class LayerWiring:
    inputs: tuple[int, ...]  # absolute indices of the layers this one reads
    concat: bool  # whether the layer takes a list of inputs


def _build(num_classes: int, in_channels: int, form: str) -> tuple[nn.Sequential, list[LayerWiring]]:
    fused = form == "fused"
    modules, wiring, channels = [], [], []
    for index, (inputs, spec) in enumerate(yolov7_layers(num_classes)):
        sources = inputs if isinstance(inputs, list) else [inputs]
        absolute = tuple(index + s if s < 0 else s for s in sources)
        c_in = [channels[i] if i >= 0 else in_channels for i in absolute]
        kind = spec[0]
        if kind == "conv":
            module, c_out = Conv(c_in[0], spec[1], spec[2], spec[3], fused=fused), spec[1]
        elif kind == "mp":
            module, c_out = MP(), c_in[0]
        elif kind == "upsample":
            module, c_out = nn.Upsample(scale_factor=2, mode="nearest"), c_in[0]
        elif kind == "concat":
            module, c_out = Concat(), sum(c_in)
        elif kind == "sppcspc":
            module, c_out = SPPCSPC(c_in[0], spec[1], fused=fused), spec[1]
        elif kind == "repconv":
            module, c_out = RepConv(c_in[0], spec[1], fused=fused), spec[1]
        else:  # the head: IDetect with implicit layers in the training form, Detect otherwise
            head = IDetect if form == "training" else Detect
            module, c_out = head(spec[1], channels=tuple(c_in)), 0
        modules.append(module)
        wiring.append(LayerWiring(absolute, isinstance(inputs, list)))
        channels.append(c_out)
    return nn.Sequential(*modules), wiring


class YOLOv7(nn.Module):
    """YOLOv7 in one of :data:`FORMS`. ``forward`` returns ``(detections, sppcspc_features)``."""

    def __init__(self, num_classes: int = 80, in_channels: int = 3, form: str = "training"):
        super().__init__()
        if form not in FORMS:
            raise InputError(f"unknown YOLOv7 form {form!r}; expected one of {', '.join(FORMS)}")
        self.num_classes = num_classes
        self.form = form
        self.model, self._wiring = _build(num_classes, in_channels, form)
        self._needed = {i for wiring in self._wiring for i in wiring.inputs}

    @property
    def detect(self) -> Detect:
        return self.model[-1]

    @torch.no_grad()
    def fuse(self) -> YOLOv7:
        """Merge every Conv+BN, every RepConv and the implicit layers: the fused form, in place.

        Outputs stay the same up to fp32 rounding (BatchNorm uses its running statistics, as in eval mode).
        """
        for module in self.modules():
            if isinstance(module, (Conv, RepConv)):
                module.fuse()
        if isinstance(self.detect, IDetect):
            self.model[-1] = self.detect.fused().train(self.detect.training)
        self.form = "fused"
        return self

    def _run(self, x: torch.Tensor, last_layer: int) -> list[torch.Tensor | None]:
        outputs: list[torch.Tensor | None] = []
        for index in range(last_layer + 1):
            wiring = self._wiring[index]
            inputs = [outputs[i] if i >= 0 else x for i in wiring.inputs]
            y = self.model[index](inputs if wiring.concat else inputs[0])
            # keep only what later layers or the caller read, so memory stays flat
            outputs.append(y if (index in self._needed or index in (SPPCSPC_LAYER, last_layer)) else None)
        return outputs

    def forward(self, x: torch.Tensor):
        """Detections (raw per level in training mode, decoded in eval mode) and the SPPCSPC map."""
        outputs = self._run(x, len(self.model) - 1)
        return outputs[-1], outputs[SPPCSPC_LAYER]

    def forward_backbone(self, x: torch.Tensor) -> torch.Tensor:
        """Only layers 0..51: the SPPCSPC map ``[B, 512, H/32, W/32]`` without the detection head."""
        return self._run(x, SPPCSPC_LAYER)[SPPCSPC_LAYER]


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def num_classes_from_state_dict(state_dict: dict[str, torch.Tensor]) -> int:
    """The class count implied by the detection convs ``model.105.m.0.weight`` (na * (5 + nc) outputs)."""
    key = f"model.{DETECT_LAYER}.m.0.weight"
    if key not in state_dict:
        raise InputError(f"not a YOLOv7 state dict: {key!r} is missing")
    anchors = state_dict.get(f"model.{DETECT_LAYER}.anchors")
    num_anchors = anchors.shape[1] if anchors is not None and anchors.ndim == 3 else 3
    outputs = state_dict[key].shape[0]
    if outputs % num_anchors or outputs // num_anchors <= 5:
        raise InputError(f"{key} has {outputs} output channels, not a multiple of {num_anchors} anchors x (5 + nc)")
    return outputs // num_anchors - 5
