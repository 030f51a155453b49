"""The U-Net engine: numpy, scipy, torch and tifffile only (no Qt, no napari).

Modules
-------
model       UNet and the valid-size arithmetic
tiling      overlap-tile prediction (iter_predict generator, predict)
labels      the label convention shared by the CLI, widgets and docs
weights     class balance + border weight map (paper eq. 2)
augment     elastic deformation, flips/rotations, intensity jitter
train       TrainConfig and the iter_train generator
checkpoint  safe, atomic save/load of weights + config
io          TIFF stacks (lazy when large), folders of slices, normalisation
metrics     pixel error, V_rand, Rand error, IoU, instance F1
"""
