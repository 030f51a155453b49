"""The U-Net engine: numpy, scipy, torch and tifffile (zarr, dask.distributed lazily, for big volumes only);
no Qt, no napari (import-linter checks it).

Stages, each a subpackage with an ``__all__``; a stage imports only the stages below it (an import-linter
``layers`` contract), and docs/architecture.md has the map:

export     bioimage.io packages written from a trained model
evaluate   metrics (pixel error, Rand, IoU, instance F1) and predict-and-score
train      config and recommended settings, the start choice, sampling, eq. 2 weights, augmentation,
           losses, the training loop and its events
predict    tile plan and overlap-tile prediction, block-wise prediction into OME-Zarr, guidance, events
models     safe model files, bioimage.io packages, one ``load_model`` for names, files and packages
network    the U-Net and its valid sizes; device, memory budget and precision
data       TIFF and OME-Zarr files, planes and channels, intensity, the label convention, zoom
drain      the synchronous drain of a core generator
"""
