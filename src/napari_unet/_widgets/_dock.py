"""Docking: every plugin widget scrolls inside its dock, the plugin's docks share one tab group, and a
widget leaves with its dock.

napari docks a magicgui Container's ``native`` widget as it is: a dock then asks for the widget's full
height, and five docks stacked on one side make the main window taller than the screen (1200 x 1860 on a
1280 x 800 screen with the EM sample, the Train and Predict buttons below its edge). :func:`fit_dock`
makes one widget behave whichever path docked it (Plugins menu, ``add_plugin_dock_widget``, ``make demo``):

- docked, its widget sits in a :class:`QScrollArea` (vertical scroll bar as needed), so a dock asks for
  little height and the window never grows past the screen;
- docked beside another of the plugin's docks on the same side, it joins that dock's tab group and
  shows on top;
- undocked (the dock's close button: napari unparents the inner widget and deletes the dock), its Qt
  widget is deleted, so every ``destroyed`` clean-up runs (jobs stop, previews remove their layers, viewer
  events disconnect) and nothing keeps the widget alive.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable

from qtpy.QtCore import QEvent, QObject, Qt
from qtpy.QtWidgets import QDockWidget, QScrollArea, QStyle

OURS = "napari_unet_dock"  # Qt property set on the plugin's docks: which docks to tab with


class _DockScroll(QScrollArea):
    """The scroll area a docked widget lives in; deletes itself (and the widget) once napari unparents it."""

    def __init__(self, inner):
        super().__init__()
        self.setWidgetResizable(True)
        self.setFrameShape(QScrollArea.Shape.NoFrame)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAsNeeded)
        self.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAsNeeded)
        bar = self.style().pixelMetric(QStyle.PixelMetric.PM_ScrollBarExtent)
        # as wide as the widget needs beside a scroll bar: no horizontal scrolling at first
        self.setMinimumWidth(inner.minimumSizeHint().width() + bar + 4)
        self.setWidget(inner)
        # napari's dock_widgets / add_plugin_dock_widget find the magicgui widget through this attribute
        magic = getattr(inner, "_magic_widget", None)
        if magic is not None:
            self._magic_widget = magic

    def event(self, ev):
        if ev.type() == QEvent.Type.ParentChange and self.parent() is None:
            self.deleteLater()  # the dock was closed: napari took the widget out of it
        return super().event(ev)


class _Watcher(QObject):
    """Event filter on a container's native widget: when napari puts it in a dock, follow that dock."""

    def __init__(self, native, wrap: Callable):
        super().__init__(native)
        self._wrap = wrap
        native.installEventFilter(self)

    def eventFilter(self, obj, ev):
        if ev.type() == QEvent.Type.ParentChange:
            dock = obj.parent()
            if isinstance(dock, QDockWidget) and not dock.property(OURS):
                dock.setProperty(OURS, True)
                # napari adds the dock to the window right after building it: settle it then
                dock.dockLocationChanged.connect(self._wrap)
        return False


def fit_dock(container) -> None:
    """Make ``container`` (a magicgui Container) scroll in its dock, tab with the plugin's other docks on
    its side, and be deleted with its dock (its ``native.destroyed`` clean-ups then run).

    A widget that is never docked (built in a test or a script) is left as it is.
    """
    native = container.native
    ref = weakref.ref(native)
    settled = []

    def settle(area=None):
        w = ref()
        if w is None or settled:
            return
        dock = w.parent()
        if not isinstance(dock, QDockWidget):
            return
        settled.append(True)
        dock.setWidget(_DockScroll(w))
        _join_tabs(dock)

    _Watcher(native, settle)


def _join_tabs(dock) -> None:
    """Tab ``dock`` with the last of the plugin's open docks on its side of the main window, on top."""
    window = dock.parent()
    if window is None or not hasattr(window, "dockWidgetArea"):
        return
    area = window.dockWidgetArea(dock)
    ours = [
        d
        for d in window.findChildren(QDockWidget)
        if d is not dock
        and d.property(OURS)
        and not _closed(d)
        and not d.isFloating()
        and window.dockWidgetArea(d) == area
    ]
    if ours:
        window.tabifyDockWidget(ours[-1], dock)
        dock.show()
        dock.raise_()


def _closed(dock) -> bool:
    """Hidden on purpose: closed (deleted later) or hidden from the Window menu. A dock just added to a
    shown window is hidden too until Qt shows it on the next event-loop pass: that one counts as open."""
    return dock.isHidden() and dock.testAttribute(Qt.WidgetAttribute.WA_WState_ExplicitShowHide)


def scroll_area(container):
    """The scroll area ``container`` lives in once docked (None when not docked)."""
    parent = container.native.parent()
    while parent is not None and not isinstance(parent, QScrollArea):
        parent = parent.parent()
    return parent
