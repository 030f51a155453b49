"""Screenshots for docs/user-guide.md, on a 1280 x 800 laptop screen:
run `xvfb-run -a -s "-screen 0 1280x800x24" .venv/bin/python docs/make_screenshots.py`.

Every picture shows the plugin's own sample data (ISBI 2012 EM crop) going
through the loop the guide describes: the widgets opened as the Plugins menu opens them (one tab
group, each scrolling in its dock) -> paint -> weight map -> deformation -> train -> predict ->
uncertainty + live training. Images are palette-quantised to stay well under 300 KB.
"""

from __future__ import annotations

import time
from pathlib import Path

OUT = Path(__file__).resolve().parent / "images"
SIZE = (1280, 800)  # the whole screen of a small laptop


def wait(app, cond, timeout=600.0):
    t0 = time.perf_counter()
    while not cond():
        app.processEvents()
        time.sleep(0.01)
        if time.perf_counter() - t0 > timeout:
            raise TimeoutError("gave up waiting")
    for _ in range(20):  # let the canvas and the plot catch up
        app.processEvents()
        time.sleep(0.01)


def shot(viewer, app, name: str, dock=None) -> Path:
    from PIL import Image

    if dock is not None:
        dock.raise_()
    wait(app, lambda: True)
    path = OUT / name
    viewer.screenshot(str(path), canvas_only=False)
    img = Image.open(path).convert("RGB")
    img = img.quantize(colors=128, method=Image.Quantize.MEDIANCUT)
    img.save(path, optimize=True)
    print(f"{path.relative_to(OUT.parent.parent)}: {img.size[0]}x{img.size[1]}, {path.stat().st_size // 1024} KB")
    return path


def main():
    import napari
    from qtpy.QtWidgets import QApplication

    OUT.mkdir(parents=True, exist_ok=True)
    viewer = napari.Viewer(title="U-Net Segment")
    viewer.window.resize(*SIZE)
    app = QApplication.instance()
    viewer.open_sample("napari-unet", "em")
    image, truth = viewer.layers["EM (ISBI 2012)"], viewer.layers["EM ground truth (do not paint)"]
    truth.visible = False
    viewer.dims.set_current_step(0, 2)

    # 1. annotate + live weight map: sparse painting copied from the sample labels
    # the Plugins menu path: each widget docks on the right, in one tab group with the others
    docks = {
        name: viewer.window.add_plugin_dock_widget("napari-unet", name)
        for name in ("Annotate", "Weight map preview", "Deformation preview", "Train", "Predict")
    }
    dock_a, annotate = docks["Annotate"]
    shot(viewer, app, "first-hour.png", dock_a)
    annotate.image.value = image
    labels = annotate._on_new_labels()
    sl = (2, slice(60, 190), slice(50, 200))
    labels.data[sl] = truth.data[sl]
    labels.events.paint(value=[])
    labels.refresh()
    dock_w, wmap = docks["Weight map preview"]
    wmap.labels.value = labels
    wmap._update()
    viewer.camera.zoom = 2.2
    viewer.camera.center = (0, 125, 125)
    shot(viewer, app, "annotate-weight-map.png", dock_w)
    viewer.layers["weight map"].visible = False

    # 2. elastic deformation preview
    dock_d, deform = docks["Deformation preview"]
    deform.image.value, deform.labels.value = image, labels
    deform.sigma.value = 15.0
    deform.seed.value = 3
    deform._update()
    viewer.layers["deformed labels"].visible = False
    viewer.reset_view()  # the image and its deformed copy beside it
    shot(viewer, app, "deformation-preview.png", dock_d)
    viewer.window.remove_dock_widget(dock_d)  # closing the dock takes its layers away
    wait(app, lambda: "deformed image" not in viewer.layers)
    viewer.camera.zoom = 2.2
    viewer.camera.center = (0, 125, 125)

    # 3. fine-tune the shipped EM model on the painted labels (a short CPU run; the widget's defaults
    #    for a pretrained start: Adam 1e-4, keep what the model knows where nothing was painted)
    dock_t, train = docks["Train"]
    train.pairs[0].image.value, train.pairs[0].labels.value = image, labels
    train.start.value = "pretrained"
    train.pretrained.value = "em-membrane"
    train.device.value = "cpu"
    train.steps.value, train.preview_every.value = 60, 20
    job = train._on_train()
    wait(app, lambda: not job.running)
    viewer.layers["prediction preview"].opacity = 0.5
    shot(viewer, app, "train.png", dock_t)

    # 4. predict the whole stack with the model just trained
    dock_p, pred = docks["Predict"]
    pred.image.value = image
    pred.where.value = "whole stack"
    pred.device.value = "cpu"
    viewer.layers["prediction preview"].visible = False
    labels.visible = False
    job = pred._on_predict()
    wait(app, lambda: not job.running)
    shot(viewer, app, "predict.png", dock_p)

    # 5. the live loop: the uncertainty output says where to paint next, Go jumps there, and a live
    #    run takes the strokes painted there while it trains
    pred.output.value = "uncertainty (where to paint next)"
    pred.where.value = "current slice"
    job = pred._on_predict()
    wait(app, lambda: not job.running)
    region = pred.regions[0]
    pred._on_go()
    labels.visible = True
    train.live.value = True
    train.preview_every.value = 10
    job = train._on_train()
    wait(app, lambda: train.last_event is not None and train.last_event.step >= 5)
    z = int(viewer.dims.current_step[0])
    box = (z, slice(region.y, region.y + region.size // 2), slice(region.x, region.x + region.size // 2))
    labels.data[box] = truth.data[box]  # the user's strokes in the uncertain region
    labels.events.paint(value=[])
    labels.refresh()
    wait(app, lambda: bool(train.last_live))
    wait(app, lambda: train.last_event.step >= 25)
    dock_p.raise_()
    shot(viewer, app, "live-loop.png", dock_p)
    train._on_stop()
    wait(app, lambda: not job.running)
    viewer.close()


if __name__ == "__main__":
    main()
