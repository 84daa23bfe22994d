"""Shape presets: every distinct conv of a real network, with its exact arguments.

A preset is a list of :class:`Layer` s. A layer is one conv's arguments with the
batch left open (``N`` is a sweep parameter) plus ``count``, how many times the
network runs a conv of exactly that shape, so a count-weighted sum of layer
times estimates the network's conv time. Names are the module path of the
first conv with that shape (torchvision's names where the network is there).

The networks are generated from their architecture tables rather than typed
out, so "every distinct conv" holds by construction; ``tests/test_bench.py``
checks the ResNet-50 preset against the model in ``perf/resnet50.py``.

    ==================  ===========================================================
    preset              what
    ==================  ===========================================================
    resnet50            torchvision ResNet-50 (v1.5: stride 2 on the 3x3), 224 px
    resnet18            torchvision ResNet-18, 224 px
    vgg16               VGG-16's thirteen 3x3 convs, 224 px
    mobilenetv2         MobileNetV2: 1x1 expand, depthwise 3x3, 1x1 project, 224 px
    convnext_t          ConvNeXt-T: 4x4/4 stem, depthwise 7x7, 2x2/2 downsampling,
                        and the block MLP as 1x1 convs (timm's conv_mlp form)
    vae_decoder         Stable-Diffusion-style VAE decoder for a 256 px image:
                        3x3 at 512-128 channels on 32-256 px, 1x1 shortcuts
    yolo                YOLOv8-s backbone (CSPDarknet with C2f, SPPF), 640 px
    smoke               four tiny layers for Triton's interpreter (CPU)
    ==================  ===========================================================
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from ..spec import Conv2dProblem, problem_from_shapes

__all__ = ["Layer", "Preset", "PRESETS", "get_preset"]


@dataclass(frozen=True)
class Layer:
    """One conv's arguments, batch excluded. ``H``/``W`` are the input's size."""

    name: str
    C: int
    H: int
    W: int
    K: int
    R: int
    S: int
    stride: Tuple[int, int] = (1, 1)
    padding: Tuple[int, int] = (0, 0)
    dilation: Tuple[int, int] = (1, 1)
    groups: int = 1
    count: int = 1

    @property
    def shape_key(self) -> Tuple:
        """Everything but the name and count: two layers with equal keys are the same conv."""
        return (self.C, self.H, self.W, self.K, self.R, self.S, self.stride, self.padding, self.dilation, self.groups)

    def problem(self, N: int) -> Conv2dProblem:
        return problem_from_shapes(
            (N, self.C, self.H, self.W), (self.K, self.C // self.groups, self.R, self.S),
            self.stride, self.padding, self.dilation, self.groups,
        )

    def conv_args(self) -> Tuple[List[int], List[int], List[int], int]:
        """(stride, padding, dilation, groups) in the op schema's list form."""
        return list(self.stride), list(self.padding), list(self.dilation), self.groups


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    layers: Tuple[Layer, ...]
    batch: int  # the default N

    def select(self, names: Optional[Sequence[str]] = None, limit: int = 0) -> List[Layer]:
        """The layers named in ``names`` (all if None), at most ``limit`` (0: no limit)."""
        layers = list(self.layers)
        if names:
            by_name = {layer.name: layer for layer in layers}
            unknown = [n for n in names if n not in by_name]
            if unknown:
                raise KeyError(f"preset {self.name!r} has no layer(s) {unknown}; it has {sorted(by_name)}")
            layers = [by_name[n] for n in names]
        return layers[:limit] if limit else layers


def _conv(name, C, H, W, K, k, stride=1, padding=None, groups=1) -> Layer:
    """A square-kernel conv; padding defaults to k // 2 ('same' for odd k at stride 1)."""
    kh, kw = (k, k) if isinstance(k, int) else k
    if padding is None:
        padding = (kh // 2, kw // 2)
    pad = (padding, padding) if isinstance(padding, int) else tuple(padding)
    st = (stride, stride) if isinstance(stride, int) else tuple(stride)
    return Layer(name, C, H, W, K, kh, kw, st, pad, (1, 1), groups)


def _out(size: int, k: int, stride: int, pad: int) -> int:
    return (size + 2 * pad - k) // stride + 1


def _dedup(convs: Iterable[Layer]) -> Tuple[Layer, ...]:
    """Merge convs of equal shape into one layer (first name kept), counting them."""
    seen: "OrderedDict[Tuple, Layer]" = OrderedDict()
    for conv in convs:
        key = conv.shape_key
        if key in seen:
            seen[key] = replace(seen[key], count=seen[key].count + conv.count)
        else:
            seen[key] = conv
    return tuple(seen.values())


# --------------------------------------------------------------------------- ResNets


def resnet_convs(blocks: Sequence[int], bottleneck: bool, image: int = 224) -> List[Layer]:
    """Every conv of a torchvision ResNet, in module order (not deduplicated).

    Bottleneck blocks are v1.5: the stride sits on the 3x3 (conv2), as in
    torchvision; the first block of each stage has a 1x1 downsample conv when
    the stride or channel count changes.
    """
    convs = [_conv("conv1", 3, image, image, 64, 7, stride=2, padding=3)]
    size = _out(_out(image, 7, 2, 3), 3, 2, 1)  # stem conv, then 3x3/2 max pool
    expansion = 4 if bottleneck else 1
    in_ch = 64
    for stage, (n_blocks, width) in enumerate(zip(blocks, (64, 128, 256, 512)), start=1):
        for b in range(n_blocks):
            stride = 2 if (b == 0 and stage > 1) else 1
            out_ch = width * expansion
            pre = f"layer{stage}.{b}"
            if bottleneck:
                convs.append(_conv(f"{pre}.conv1", in_ch, size, size, width, 1))
                convs.append(_conv(f"{pre}.conv2", width, size, size, width, 3, stride=stride))
                after = _out(size, 3, stride, 1)
                convs.append(_conv(f"{pre}.conv3", width, after, after, out_ch, 1))
            else:
                convs.append(_conv(f"{pre}.conv1", in_ch, size, size, width, 3, stride=stride))
                after = _out(size, 3, stride, 1)
                convs.append(_conv(f"{pre}.conv2", width, after, after, out_ch, 3))
            if b == 0 and (stride != 1 or in_ch != out_ch):
                convs.append(_conv(f"{pre}.downsample.0", in_ch, size, size, out_ch, 1, stride=stride))
            in_ch, size = out_ch, after
    return convs


# --------------------------------------------------------------------------- VGG-16


def vgg16_convs(image: int = 224) -> List[Layer]:
    cfg = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
    convs, in_ch, size, idx = [], 3, image, 0
    for v in cfg:
        if v == "M":
            size //= 2
        else:
            convs.append(_conv(f"features.{idx}", in_ch, size, size, v, 3))
            in_ch = v
        idx += 1 if v == "M" else 2  # torchvision numbers conv, relu, pool modules
    return convs


# --------------------------------------------------------------------------- MobileNetV2


def mobilenetv2_convs(image: int = 224) -> List[Layer]:
    """torchvision MobileNetV2 (width 1.0): (expand ratio t, channels c, repeats n, stride s)."""
    settings = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                (6, 320, 1, 1)]
    convs = [_conv("features.0.0", 3, image, image, 32, 3, stride=2)]
    size, in_ch, idx = _out(image, 3, 2, 1), 32, 1
    for t, c, n, s in settings:
        for i in range(n):
            stride = s if i == 0 else 1
            hidden = in_ch * t
            pre = f"features.{idx}.conv"
            j = 0
            if t != 1:
                convs.append(_conv(f"{pre}.0.0 (expand)", in_ch, size, size, hidden, 1))
                j = 1
            convs.append(_conv(f"{pre}.{j}.0 (depthwise)", hidden, size, size, hidden, 3, stride=stride,
                               groups=hidden))
            size = _out(size, 3, stride, 1)
            convs.append(_conv(f"{pre}.{j + 1} (project)", hidden, size, size, c, 1))
            in_ch, idx = c, idx + 1
    convs.append(_conv(f"features.{idx}.0", in_ch, size, size, 1280, 1))
    return convs


# --------------------------------------------------------------------------- ConvNeXt-T


def convnext_t_convs(image: int = 224) -> List[Layer]:
    """ConvNeXt-T: dims (96, 192, 384, 768), depths (3, 3, 9, 3).

    The block's pointwise MLP (dim -> 4 dim -> dim) is an nn.Linear in
    torchvision and a 1x1 conv in timm's conv_mlp form; it is listed as 1x1
    convs so the preset covers the whole block.
    """
    dims, depths = (96, 192, 384, 768), (3, 3, 9, 3)
    convs = [_conv("features.0.0 (stem 4x4/4)", 3, image, image, dims[0], 4, stride=4, padding=0)]
    size = image // 4
    for stage, (dim, depth) in enumerate(zip(dims, depths)):
        feat = 1 + 2 * stage
        if stage > 0:
            convs.append(_conv(f"features.{feat - 1}.1 (downsample 2x2/2)", dims[stage - 1], size, size, dim, 2,
                               stride=2, padding=0))
            size //= 2
        for b in range(depth):
            pre = f"features.{feat}.{b}.block"
            convs.append(_conv(f"{pre}.0 (depthwise 7x7)", dim, size, size, dim, 7, groups=dim))
            convs.append(_conv(f"{pre}.3 (mlp fc1 as 1x1)", dim, size, size, 4 * dim, 1))
            convs.append(_conv(f"{pre}.5 (mlp fc2 as 1x1)", 4 * dim, size, size, dim, 1))
    return convs


# --------------------------------------------------------------------------- VAE decoder


def vae_decoder_convs(latent: int = 32) -> List[Layer]:
    """Stable Diffusion's VAE decoder (block_out_channels 128, 256, 512, 512; 2 resnets per
    block + 1 in the decoder): latent 4 x 32 x 32 -> image 3 x 256 x 256.

    Attention and GroupNorm are left out: only the convs. Each resnet is two
    3x3 convs plus a 1x1 shortcut when its channel count changes; each up
    block but the last ends in nearest-2x upsampling and a 3x3 conv.
    """
    convs = [_conv("conv_in", 4, latent, latent, 512, 3)]
    size, ch = latent, 512
    convs += [_conv(f"mid_block.resnets.{i}.conv{j}", ch, size, size, ch, 3) for i in range(2) for j in (1, 2)]
    for b, out_ch in enumerate((512, 512, 256, 128)):
        for i in range(3):
            pre = f"up_blocks.{b}.resnets.{i}"
            convs.append(_conv(f"{pre}.conv1", ch, size, size, out_ch, 3))
            convs.append(_conv(f"{pre}.conv2", out_ch, size, size, out_ch, 3))
            if ch != out_ch:
                convs.append(_conv(f"{pre}.conv_shortcut", ch, size, size, out_ch, 1))
            ch = out_ch
        if b < 3:
            size *= 2
            convs.append(_conv(f"up_blocks.{b}.upsamplers.0.conv", ch, size, size, ch, 3))
    convs.append(_conv("conv_out", ch, size, size, 3, 3))
    return convs


# --------------------------------------------------------------------------- YOLO backbone


def yolo_convs(image: int = 640) -> List[Layer]:
    """YOLOv8-s backbone: widths 32, 64, 128, 256, 512; C2f repeats 1, 2, 2, 1; SPPF.

    C2f(c_in, c_out, n): cv1 1x1 c_in -> c_out, n bottlenecks of two 3x3 at
    c_out/2 on one half, cv2 1x1 (2 + n) * c_out/2 -> c_out. Downsampling is a
    3x3/2 conv.
    """
    convs = [_conv("model.0.conv (stem 3x3/2)", 3, image, image, 32, 3, stride=2)]
    size, ch, idx = image // 2, 32, 1
    for width, n in ((64, 1), (128, 2), (256, 2), (512, 1)):
        convs.append(_conv(f"model.{idx}.conv (3x3/2)", ch, size, size, width, 3, stride=2))
        size //= 2
        idx += 1
        half = width // 2
        convs.append(_conv(f"model.{idx}.cv1", width, size, size, width, 1))
        for i in range(n):
            convs.append(_conv(f"model.{idx}.m.{i}.cv1", half, size, size, half, 3))
            convs.append(_conv(f"model.{idx}.m.{i}.cv2", half, size, size, half, 3))
        convs.append(_conv(f"model.{idx}.cv2", (2 + n) * half, size, size, width, 1))
        ch, idx = width, idx + 1
    convs.append(_conv(f"model.{idx}.cv1 (sppf)", ch, size, size, ch // 2, 1))
    convs.append(_conv(f"model.{idx}.cv2 (sppf)", 4 * (ch // 2), size, size, ch, 1))
    return convs


# --------------------------------------------------------------------------- smoke


def smoke_convs() -> List[Layer]:
    """Tiny layers that exercise the kernels' shapes of interest, fast under the interpreter."""
    return [
        _conv("3x3", 8, 10, 10, 16, 3),
        _conv("1x1/2", 16, 9, 9, 8, 1, stride=2),
        _conv("stem 7x7/2 C=3", 3, 12, 12, 8, 7, stride=2, padding=3),
        _conv("depthwise 3x3", 8, 8, 8, 8, 3, groups=8),
    ]


def _preset(name, description, convs, batch) -> Preset:
    return Preset(name, description, _dedup(convs), batch)


PRESETS: Dict[str, Preset] = {
    p.name: p
    for p in (
        _preset("resnet50", "torchvision ResNet-50 v1.5, 224 px", resnet_convs((3, 4, 6, 3), True), 32),
        _preset("resnet18", "torchvision ResNet-18, 224 px", resnet_convs((2, 2, 2, 2), False), 32),
        _preset("vgg16", "VGG-16, 224 px", vgg16_convs(), 16),
        _preset("mobilenetv2", "MobileNetV2 1.0, 224 px", mobilenetv2_convs(), 32),
        _preset("convnext_t", "ConvNeXt-T, 224 px (MLP as 1x1 convs)", convnext_t_convs(), 32),
        _preset("vae_decoder", "SD-style VAE decoder, 32 px latent -> 256 px image", vae_decoder_convs(), 4),
        _preset("yolo", "YOLOv8-s backbone, 640 px", yolo_convs(), 16),
        _preset("smoke", "tiny layers for Triton's interpreter", smoke_convs(), 2),
    )
}


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise KeyError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}") from None
