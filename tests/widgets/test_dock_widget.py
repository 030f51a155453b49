"""Docking: each widget scrolls in its dock, the plugin's docks share one tab group whatever path opened
them, and a widget does not outlive its dock."""

import gc
import weakref

import pytest
from widget_helpers import close_dock, dock

pytestmark = pytest.mark.gui

WIDGETS = ("Annotate", "Weight map preview", "Deformation preview", "Train", "Predict")


def test_menu_path_docks_scroll_and_share_one_tab_group(em_viewer, qtbot):
    from qtpy.QtWidgets import QScrollArea

    window = em_viewer.window._qt_window
    docks = [em_viewer.window.add_plugin_dock_widget("napari-unet", name)[0] for name in WIDGETS]
    assert all(isinstance(d.widget(), QScrollArea) for d in docks)
    for d in docks:  # one tab group: each dock is tabbed with the four others
        assert set(window.tabifiedDockWidgets(d)) == set(docks) - {d}
    # napari's own look-ups still find the magicgui widgets
    again = em_viewer.window.add_plugin_dock_widget("napari-unet", "Train")
    assert again[0] is docks[3] and again[1] is em_viewer.window.dock_widgets["Train (napari-unet)"]
    assert again[1].train_button.native.window() is window

    # closed and opened again from the menu: a new widget, tabbed with the open docks only
    close_dock(em_viewer, again[1])
    qtbot.waitUntil(lambda: "Train (napari-unet)" not in em_viewer.window.dock_widgets, timeout=10000)
    reopened, widget = em_viewer.window.add_plugin_dock_widget("napari-unet", "Train")
    assert widget is not again[1] and isinstance(reopened.widget(), QScrollArea)
    others = [d for i, d in enumerate(docks) if i != 3]
    assert set(window.tabifiedDockWidgets(reopened)) == set(others)


@pytest.mark.parametrize("name", WIDGETS)
def test_widget_is_collected_after_its_dock_closes(em_viewer, qtbot, name):
    widget = dock(em_viewer, name)
    destroyed = []
    widget.native.destroyed.connect(lambda *_: destroyed.append(True))
    ref = weakref.ref(widget)
    close_dock(em_viewer, widget)
    del widget
    qtbot.waitUntil(lambda: bool(destroyed), timeout=10000)
    qtbot.waitUntil(lambda: gc.collect() >= 0 and ref() is None, timeout=10000)


def test_weight_map_preview_leaves_with_its_dock(em_viewer, qtbot):
    from napari_unet._widgets._weights_preview import LAYER_NAME

    labels = em_viewer.layers["EM ground truth (do not paint)"]
    em_viewer.layers.selection.active = labels
    w = dock(em_viewer, "Weight map preview")
    w.labels.value = labels
    qtbot.waitUntil(lambda: LAYER_NAME in em_viewer.layers, timeout=10000)
    assert em_viewer.layers.selection.active is labels
    close_dock(em_viewer, w)
    del w
    qtbot.waitUntil(lambda: LAYER_NAME not in em_viewer.layers, timeout=10000)
    labels.events.paint(value=[])  # a stroke after the close brings nothing back
    qtbot.wait(500)
    assert LAYER_NAME not in em_viewer.layers
