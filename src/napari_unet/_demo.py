"""``make demo``: napari with the EM sample and the U-Net Segment widgets docked."""

from __future__ import annotations

WIDGETS = ("Annotate", "Weight map preview", "Deformation preview", "Train", "Predict")


def launch(block: bool = True):
    """Open napari, load the EM sample (ISBI 2012 crop + labels), dock the widgets; run napari if ``block``.

    Returns the viewer (useful with ``block=False`` in scripts and tests).
    """
    import napari

    viewer = napari.Viewer(title="U-Net Segment demo")
    viewer.open_sample("napari-unet", "em")
    widgets = {}
    for name in WIDGETS:  # as the Plugins menu docks them: one tab group, each scrolling (_widgets/_dock.py)
        _, widgets[name] = viewer.window.add_plugin_dock_widget("napari-unet", name)
    train = widgets["Train"]
    train.pairs[0].image.value = viewer.layers["EM (ISBI 2012)"]
    train.pairs[0].labels.value = viewer.layers["EM ground truth (do not paint)"]
    widgets["Weight map preview"].labels.value = viewer.layers["EM ground truth (do not paint)"]
    if block:
        napari.run()
    return viewer


if __name__ == "__main__":
    launch()
