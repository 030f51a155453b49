"""The U-Net engine: numpy, scipy, torch and tifffile (zarr, dask.distributed lazily, for big volumes only);
no Qt, no napari (import-linter checks it).

Modules (one concern each; docs/architecture.md has the map)
-------------------------------------------------------------
model       UNet, the valid-size arithmetic and the network's margin
tiling      overlap-tile prediction (iter_predict generator, predict, the tile plan, output allocation,
            forward_tiles, choose_precision: bf16 where the CPU has it natively and a trial says it pays)
blocks      block-wise prediction into an OME-Zarr, here or on dask.distributed; resumable; == tiling's result
ngff        OME-Zarr (NGFF 0.4/0.5): lazy reading, prediction outputs (labels/<name>), atomic chunks
train       TrainConfig (validated once, LIMITS for the widget), iter_train generator, TrainResult
sampling    training data: annotated slices prepared once, tiles sampled + augmented
losses      eq. 2 weighted cross-entropy, the keep-prior (distillation) loss, annotated IoU
events      TileEvent, BlockEvent, TrainEvent (with weight snapshots), TrainState, run (the synchronous drain)
device      device choice, memory budget, ONE precision / memory-format policy
intensity   percentile normalisation: one mapping for training, prediction and previews
planes      the (C, H, W) plane z of an image or stack; RGB -> grey on request
labels      the label convention; predictions -> instances; ISBI labels -> instances
weights     class balance + border weight map (paper eq. 2), W0 / SIGMA
augment     elastic deformation, flips/rotations, intensity jitter
evaluate    predict + score against ground truth (evaluate_arrays, with a progress callback)
checkpoint  safe, atomic save/load of weights + config
bioimageio  bioimage.io packages: export, import (ours exactly; other 2D U-Nets wrapped); the extra, lazily
io          TIFF stacks (lazy when large), folders of slices, label TIFFs
metrics     pixel error, V_rand, Rand error, IoU, instance F1
"""
