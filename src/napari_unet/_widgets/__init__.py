"""napari dock widgets (Qt): thin magicgui Containers over the generators of :mod:`napari_unet.core`.

Importing this package imports neither torch nor the core; each widget module
imports what it needs when the widget is built.
"""
