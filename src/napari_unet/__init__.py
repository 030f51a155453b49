"""napari-unet: the U-Net paper (Ronneberger, Fischer, Brox 2015) in napari.

Importing this package loads neither torch nor Qt; the science lives in
:mod:`napari_unet.core`, the napari widgets in :mod:`napari_unet._widgets`.
"""

__version__ = "0.1.0"
