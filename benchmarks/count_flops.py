"""FLOPs of the shipped em-membrane model per prediction tile, for docs/scaling.md's GPU estimate.

Counted with ``torch.utils.flop_counter`` (a multiply-add = 2 FLOPs) on meta tensors: nothing is
computed, so the count takes a moment on any machine. Per tile: the input and output sides, the
GFLOP of one forward pass, and the kFLOP per *output* pixel (the tile's context included).

Run: ``python benchmarks/count_flops.py`` (writes benchmarks/results/flops.json).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from napari_unet.core.models.load import load_model
from napari_unet.core.network.unet import input_size_for_output

RESULTS = Path(__file__).resolve().parent / "results" / "flops.json"
TILES_OUT = (260, 516, 1028, 1860)  # 1024 px blocks: 2 x 2 tiles of 516 (CPU) or one of 1028 (GPU)


def count(model: torch.nn.Module, size: int) -> float:
    """FLOPs of one forward pass of ``model`` on a ``size`` x ``size`` single-plane input."""
    x = torch.zeros(1, model.config.in_channels, size, size, device="meta")
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        model(x)
    return float(fc.get_total_flops())


def main() -> None:
    model = load_model("em-membrane").eval().to("meta")
    depth = model.config.depth
    tiles = []
    for out in TILES_OUT:
        size = input_size_for_output(out, depth)
        flops = count(model, size)
        tiles.append(
            {"tile_in": size, "tile_out": out, "gflop": flops / 1e9, "kflop_per_output_px": flops / out**2 / 1e3}
        )
    res = {"model": "em-membrane", "depth": depth, "base_channels": model.config.base_channels, "tiles": tiles}
    RESULTS.write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
