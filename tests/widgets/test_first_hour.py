"""The user guide's first hour, end to end, on a 1280 x 800 screen through the Plugins-menu path.

Every widget is opened as the Plugins menu opens it (``add_plugin_dock_widget`` with its manifest name),
and every button the test presses is on screen when pressed: inside the screen's available geometry,
inside the main window, and inside the visible part of its dock's scroll area (scrolled there first
with ``ensureWidgetVisible``, as a user scrolls). Run it under ``xvfb-run -a -s "-screen 0 1280x800x24"``
(``make test``); on a bigger screen the window is still sized to 1280 x 800 at most.
"""

import numpy as np
import pytest
from widget_helpers import brush

pytestmark = pytest.mark.gui

SCREEN = (1280, 800)  # the laptop screen the guide is written for


def _manifest_widgets() -> list[str]:
    from npe2 import PluginManager

    manifest = PluginManager.instance().get_manifest("napari-unet")
    return [w.display_name for w in manifest.contributions.widgets]


def _screen_rect(window):
    """The part of the screen the window may use: the screen's available geometry, at most 1280 x 800."""
    from qtpy.QtCore import QRect

    avail = window.screen().availableGeometry()
    return avail.intersected(QRect(avail.topLeft().x(), avail.topLeft().y(), *SCREEN))


def _global_rect(widget):
    from qtpy.QtCore import QPoint, QRect

    return QRect(widget.mapToGlobal(QPoint(0, 0)), widget.size())


def _dock_of(container):
    from qtpy.QtWidgets import QDockWidget

    parent = container.native.parent()
    while not isinstance(parent, QDockWidget):
        parent = parent.parent()
    return parent


def press(qtbot, window, container, button) -> None:
    """Bring ``container``'s tab to the front, scroll ``button`` into view, check it is on screen, click it."""
    from qtpy.QtCore import Qt

    from napari_unet._widgets._dock import scroll_area

    _dock_of(container).raise_()  # the user clicks the dock's tab
    scroll = scroll_area(container)
    qtbot.waitUntil(lambda: button.native.isVisible(), timeout=10_000)

    def scrolled_into_view():  # as a user scrolls: again while the layout settles (a section just unfolded)
        scroll.ensureWidgetVisible(button.native)
        return _global_rect(scroll.viewport()).contains(_global_rect(button.native))

    qtbot.waitUntil(scrolled_into_view, timeout=10_000)
    rect = _global_rect(button.native)
    name = button.text
    assert button.enabled, f"{name!r} is disabled"
    assert _screen_rect(window).contains(rect), f"{name!r} at {rect.getRect()} is off the screen"
    assert window.frameGeometry().contains(rect), f"{name!r} at {rect.getRect()} is outside the window"
    viewport = _global_rect(scroll.viewport())
    assert viewport.contains(rect), f"{name!r} at {rect.getRect()} is scrolled out of {viewport.getRect()}"
    qtbot.mouseClick(button.native, Qt.MouseButton.LeftButton)


def test_first_hour_on_a_1280x800_screen(make_napari_viewer, qtbot):
    from napari.layers import Labels

    from napari_unet._widgets import _state

    viewer = make_napari_viewer(show=True)
    window = viewer.window._qt_window
    screen = _screen_rect(window)
    window.setGeometry(screen)
    viewer.open_sample("napari-unet", "em")  # File > Open Sample > U-Net Segment > EM membranes
    widgets = {name: viewer.window.add_plugin_dock_widget("napari-unet", name)[1] for name in _manifest_widgets()}
    assert set(widgets) == {"Annotate", "Weight map preview", "Deformation preview", "Train", "Predict"}
    qtbot.waitUntil(lambda: window.isVisible(), timeout=10_000)
    qtbot.wait(200)
    docks = [_dock_of(w) for w in widgets.values()]
    for d in docks:  # one tab group on the shown window
        assert set(window.tabifiedDockWidgets(d)) == set(docks) - {d}
    assert screen.contains(window.frameGeometry()), f"window {window.frameGeometry().getRect()} outgrew the screen"
    image = viewer.layers["EM (ISBI 2012)"]

    # 1. Annotate: new training labels, a few strokes of background (1) and objects (2, 3)
    annotate = widgets["Annotate"]
    annotate.image.value = image
    press(qtbot, window, annotate, annotate.new_labels)
    labels = viewer.layers["EM (ISBI 2012) labels"]
    assert isinstance(labels, Labels) and viewer.layers.selection.active is labels
    for value, y in ((1, 40), (1, 200), (2, 100), (3, 150)):
        brush(labels, 0, value, y, 20, 230, qtbot)
    assert set(np.unique(labels.data[0])) == {0, 1, 2, 3}

    # weight map and deformation previews follow the strokes, beside or over them, never selected
    weights = widgets["Weight map preview"]
    weights.labels.value = labels
    deform = widgets["Deformation preview"]
    deform.image.value, deform.labels.value = image, labels
    qtbot.waitUntil(lambda: "weight map" in viewer.layers and "deformed image" in viewer.layers, timeout=30_000)
    assert viewer.layers.selection.active is labels

    # 2. Train a tiny model briefly (tiny settings, as tests/widgets/test_train_widget.py)
    train = widgets["Train"]
    train.pairs[0].image.value, train.pairs[0].labels.value = image, labels
    _dock_of(train).raise_()
    train.show_advanced.value = True  # the user ticks "advanced settings"
    train.start.value = "scratch"
    train.device.value = "cpu"
    train.depth.value, train.base_channels.value, train.tile_in.value = 2, 4, 124
    train.steps.value, train.preview_every.value = 8, 4
    train.optimizer.value, train.lr.value = "adam", 1e-3
    press(qtbot, window, train, train.train_button)
    qtbot.waitUntil(lambda: train.job is not None and not train.job.running, timeout=180_000)
    assert train.result is not None and train.result.steps_done == 8
    assert _state.latest() in _state.TRAINED_MODELS

    # 3. Predict the slice on screen into a Labels layer with the model just trained
    predict = widgets["Predict"]
    predict.model.value = _state.latest()
    predict.image.value = image
    predict.output.value = "semantic labels"
    predict.where.value = "current slice"
    predict.device.value = "cpu"
    press(qtbot, window, predict, predict.predict_button)
    qtbot.waitUntil(lambda: predict.job is not None and not predict.job.running, timeout=120_000)
    out = viewer.layers["EM (ISBI 2012) prediction"]
    assert isinstance(out, Labels) and out.data.shape[-2:] == (256, 256)
    assert "done" in predict.status.value
    qtbot.wait(200)
    assert screen.contains(window.frameGeometry()), "the window grew past the screen during the session"
