"""The U-Net of Ronneberger, Fischer and Brox (2015), and its valid-size arithmetic.

With the defaults (depth 4, 64 base channels, ``padding='valid'``) this is the
network of the paper: a 572 x 572 tile gives a 388 x 388 output and, with two
classes, 31,030,658 parameters. ``padding='same'`` gives the padded variant
whose output is as large as its input (the input must then be a multiple of
``2**depth``).
"""

import math
from dataclasses import asdict, dataclass
from typing import Literal

import torch
from torch import nn

__all__ = [
    "MirroredUNet",
    "Padding",
    "UNet",
    "UNetConfig",
    "build_model",
    "check_tile_in",
    "input_size_for_output",
    "is_valid_size",
    "margin",
    "min_input_size",
    "count_parameters",
    "n_parameters",
    "nearest_valid_sizes",
    "output_size",
    "parameter_shapes",
    "valid_input_sizes",
]

Padding = Literal["valid", "same"]


@dataclass(frozen=True)
class UNetConfig:
    """Everything needed to rebuild a :class:`UNet` (stored in checkpoints)."""

    in_channels: int = 1
    n_classes: int = 2
    depth: int = 4
    base_channels: int = 64
    padding: Padding = "valid"
    dropout: float = 0.5

    def to_dict(self) -> dict:
        return asdict(self)


def _he_init(module: nn.Module) -> None:
    # Paper, section 3: Gaussian with std sqrt(2/N), N = the incoming nodes of one output unit:
    # k*k*C_in for a convolution; for the 2x2 stride-2 up-convolution each output pixel sees one tap per
    # input channel, so N = C_in * k*k / (stride*stride) = C_in (k*k*C_in made its std half the paper's)
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        k = module.kernel_size[0] * module.kernel_size[1]
        if isinstance(module, nn.ConvTranspose2d):
            k = max(1, k // (module.stride[0] * module.stride[1]))
        nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / (k * module.in_channels)))
        if module.bias is not None:
            nn.init.zeros_(module.bias)


class _DoubleConv(nn.Sequential):
    def __init__(self, c_in: int, c_out: int, pad: int):
        super().__init__(
            nn.Conv2d(c_in, c_out, 3, padding=pad),
            nn.ReLU(inplace=True),
            nn.Conv2d(c_out, c_out, 3, padding=pad),
            nn.ReLU(inplace=True),
        )


def _center_crop(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    dy = (x.shape[-2] - h) // 2
    dx = (x.shape[-1] - w) // 2
    return x[..., dy : dy + h, dx : dx + w]


class UNet(nn.Module):
    """U-Net as in the paper.

    Parameters
    ----------
    in_channels : int
        Input channels (1 for grey EM / fluorescence).
    n_classes : int
        Output classes of the final 1x1 convolution (logits, no softmax).
    depth : int
        Number of 2x2 max-pool steps (4 in the paper).
    base_channels : int
        Channels of the first level (64 in the paper); doubled at every step down.
    padding : {'valid', 'same'}
        'valid' = unpadded 3x3 convolutions as in the paper (the output is smaller
        than the input, see :func:`output_size`); 'same' = zero-padded variant.
    dropout : float
        Dropout at the end of the contracting path (paper: "drop-out layers at the
        end of the contracting path"), applied to the bottom feature map.
    """

    # TorchScript (the bioimage.io export) compiles properties; these read the Python-only config
    __jit_unused_properties__ = ["depth", "n_classes", "padding"]

    def __init__(
        self,
        in_channels: int = 1,
        n_classes: int = 2,
        depth: int = 4,
        base_channels: int = 64,
        padding: Padding = "valid",
        dropout: float = 0.5,
    ):
        super().__init__()
        if padding not in ("valid", "same"):
            raise ValueError(f"padding must be 'valid' or 'same', got {padding!r}")
        if depth < 1 or base_channels < 1 or n_classes < 1 or in_channels < 1:
            raise ValueError("depth, base_channels, n_classes and in_channels must be >= 1")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.config = UNetConfig(in_channels, n_classes, depth, base_channels, padding, float(dropout))
        pad = 1 if padding == "same" else 0
        ch = [base_channels * 2**i for i in range(depth + 1)]
        self.down = nn.ModuleList()
        c = in_channels
        for i in range(depth):
            self.down.append(_DoubleConv(c, ch[i], pad))
            c = ch[i]
        self.pool = nn.MaxPool2d(2)
        self.bottom = _DoubleConv(ch[depth - 1], ch[depth], pad)
        # element-wise, as the paper's Caffe dropout layers (Dropout2d would drop whole feature maps)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.upconv = nn.ModuleList()
        self.up = nn.ModuleList()
        for i in reversed(range(depth)):
            self.upconv.append(nn.ConvTranspose2d(ch[i + 1], ch[i], 2, stride=2))
            self.up.append(_DoubleConv(2 * ch[i], ch[i], pad))
        self.head = nn.Conv2d(ch[0], n_classes, 1)
        self.apply(_he_init)

    @property
    def depth(self) -> int:
        return self.config.depth

    @property
    def n_classes(self) -> int:
        return self.config.n_classes

    @property
    def padding(self) -> str:
        return self.config.padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # written so that torch.jit.script compiles it (the torchscript weights of a bioimage.io export):
        # no reversed(), and zip over the two ModuleLists only
        skips: list[torch.Tensor] = []
        for block in self.down:
            x = block(x)
            skips.insert(0, x)
            x = self.pool(x)
        x = self.dropout(self.bottom(x))
        i = 0
        for upconv, block in zip(self.upconv, self.up):
            x = upconv(x)
            x = torch.cat([_center_crop(skips[i], x.shape[-2], x.shape[-1]), x], dim=1)
            x = block(x)
            i += 1
        return self.head(x)

    def output_size(self, size: int) -> int:
        return output_size(size, self.depth, self.padding)

    def margin(self) -> int:
        """Pixels lost on each side by a valid network (0 for 'same')."""
        return margin(self.depth) if self.padding == "valid" else 0


class MirroredUNet(nn.Module):
    """A :class:`UNet` that mirrors its own context in: the output is as large as the input.

    This is the network of a bioimage.io export (``core/bioimageio.py``), for tools that tile an image
    themselves (deepImageJ, ilastik, bioimageio.core): the input is reflect-padded by ``mirror`` px
    (the valid network's margin; the tiling context of a padded one), the network runs, and the
    output is centre-cropped to the input's size. One pass over a whole image equals napari-unet's
    overlap-tile prediction of it; a tool that tiles crops ``mirror`` px (the declared halo) from
    every tile. The state dict is the U-Net's under ``unet.``.

    This file imports nothing but torch, so a package can ship it as its architecture source.
    """

    def __init__(self, mirror: int, **unet_kwargs):
        super().__init__()
        self.mirror = int(mirror)
        self.unet = UNet(**unet_kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.mirror
        h, w = x.shape[-2], x.shape[-1]
        if p > 0:
            x = nn.functional.pad(x, (p, p, p, p), mode="reflect")
        return _center_crop(self.unet(x), h, w)


def n_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_parameters(config: UNetConfig) -> int:
    """The parameters of :class:`UNet` ``config``, from :func:`parameter_shapes` (nothing is built)."""
    return sum(math.prod(s) for s in parameter_shapes(config).values())


def parameter_shapes(config: UNetConfig) -> dict[str, tuple[int, ...]]:
    """The shape of every tensor in the state dict of :class:`UNet` ``config``, by arithmetic: nothing is
    built, so a model file's header can be sized (and its tensors checked) before anything is allocated.

    The sum of their products is :func:`n_parameters` of the network (the U-Net has no buffers).
    """
    ch = [config.base_channels * 2**i for i in range(config.depth + 1)]
    shapes: dict[str, tuple[int, ...]] = {}

    def conv(name: str, c_in: int, c_out: int, k: int) -> None:
        shapes[f"{name}.weight"], shapes[f"{name}.bias"] = (c_out, c_in, k, k), (c_out,)

    def double(name: str, c_in: int, c_out: int) -> None:
        conv(f"{name}.0", c_in, c_out, 3)
        conv(f"{name}.2", c_out, c_out, 3)

    for i in range(config.depth):
        double(f"down.{i}", config.in_channels if i == 0 else ch[i - 1], ch[i])
    double("bottom", ch[config.depth - 1], ch[config.depth])
    for j, i in enumerate(reversed(range(config.depth))):
        # a transposed convolution's weight is (C_in, C_out, k, k)
        shapes[f"upconv.{j}.weight"], shapes[f"upconv.{j}.bias"] = (ch[i + 1], ch[i], 2, 2), (ch[i],)
    for j, i in enumerate(reversed(range(config.depth))):
        double(f"up.{j}", 2 * ch[i], ch[i])
    conv("head", ch[0], config.n_classes, 1)
    return shapes


# ----------------------------------------------------------------------------- size arithmetic


def margin(depth: int) -> int:
    """Context lost on each side by the valid U-Net: 92 px at depth 4 (572 -> 388)."""
    # Each level loses 2 px per conv pair side at its scale, on the way down and up; the bottom once.
    return 2 * (2 * (2**depth - 1) + 2**depth)


def _trace(size: int, depth: int) -> int | None:
    """Output size of a valid U-Net for ``size``, or None when some level does not fit."""
    s = size
    for _ in range(depth):
        s -= 4
        if s < 2 or s % 2:
            return None
        s //= 2
    s -= 4
    if s < 1:
        return None
    for _ in range(depth):
        s = 2 * s - 4
        if s < 1:
            return None
    return s


def is_valid_size(size: int, depth: int, padding: Padding = "valid") -> bool:
    if padding == "same":
        return size >= 2**depth and size % 2**depth == 0
    return _trace(int(size), depth) is not None


def output_size(size: int, depth: int = 4, padding: Padding = "valid") -> int:
    """Output side length for an input side ``size``; ValueError naming valid sizes otherwise."""
    if not is_valid_size(size, depth, padding):
        lo, hi = nearest_valid_sizes(size, depth, padding)
        near = f"{lo} and {hi}" if lo is not None else f"{hi}"
        raise ValueError(
            f"input {size} gives no valid output for depth {depth} ({padding} padding); nearest valid sizes are {near}"
        )
    return size if padding == "same" else _trace(size, depth)


def min_input_size(depth: int, padding: Padding = "valid") -> int:
    if padding == "same":
        return 2**depth
    s = 1
    while _trace(s, depth) is None:
        s += 1
    return s


def valid_input_sizes(depth: int, padding: Padding = "valid", start: int | None = None, stop: int = 4096) -> list[int]:
    """All valid input side lengths in [start, stop)."""
    step = 2**depth
    first = min_input_size(depth, padding)
    sizes = range(first, stop, step)
    return [s for s in sizes if start is None or s >= start]


def nearest_valid_sizes(size: int, depth: int, padding: Padding = "valid") -> tuple[int | None, int]:
    """Largest valid size <= ``size`` (None if there is none) and smallest valid size >= ``size``."""
    first = min_input_size(depth, padding)
    step = 2**depth
    if size <= first:
        return (first if size == first else None), first
    k = (size - first) // step
    lo = first + k * step
    hi = lo if lo == size else lo + step
    return lo, hi


def input_size_for_output(out: int, depth: int, padding: Padding = "valid") -> int:
    """Smallest valid input size whose output is at least ``out``."""
    if padding == "same":
        step = 2**depth
        return max(step, -(-out // step) * step)
    s = min_input_size(depth, padding)
    step = 2**depth
    while _trace(s, depth) < out:
        s += step
    return s


def build_model(config: UNetConfig | dict) -> UNet:
    if isinstance(config, dict):
        config = UNetConfig(**config)
    return UNet(**asdict(config))


def check_tile_in(size: int, depth: int, padding: Padding = "valid") -> None:
    """ValueError naming the nearest valid sizes unless ``size`` is a valid training input tile side."""
    if padding != "valid" or is_valid_size(size, depth):
        return
    lo, hi = nearest_valid_sizes(size, depth)
    near = f"{lo} and {hi}" if lo is not None else f"{hi}"
    raise ValueError(f"input tile size {size} gives no valid output for depth {depth}; nearest valid sizes are {near}")
