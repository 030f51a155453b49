"""Reading and writing images and labels: TIFF stacks and folders (files), OME-Zarr (ngff), planes and channels, intensity normalisation, the label convention, zoom (resampling for the network)."""

from __future__ import annotations

from .files import ImageMeta, atomic_write, read_image, write_labels
from .intensity import percentiles, scale_intensity
from .labels import IGNORE, instances_from_semantic, isbi_to_instances
from .ngff import is_ome_zarr, read_ome_zarr
from .planes import as_stack, plane_at, spatial_shape
from .zoom import check_zoom, model_zoom, zoom_labels, zoom_plane

# the stage's main entry points; the rest is in its modules, each with its own __all__
__all__ = [
    "ImageMeta",
    "read_image",
    "write_labels",
    "atomic_write",
    "is_ome_zarr",
    "read_ome_zarr",
    "plane_at",
    "as_stack",
    "spatial_shape",
    "percentiles",
    "scale_intensity",
    "IGNORE",
    "instances_from_semantic",
    "isbi_to_instances",
    "zoom_plane",
    "zoom_labels",
    "check_zoom",
    "model_zoom",
]
