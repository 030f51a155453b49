import threading

import numpy as np
import pytest
import torch

from napari_unet.core.models.checkpoint import save_model
from napari_unet.core.models.load import load_model
from napari_unet.core.predict.tiles import predict
from napari_unet.core.train.config import TrainConfig
from napari_unet.core.train.events import TrainState
from napari_unet.core.train.loop import iter_train, train
from napari_unet.core.train.losses import annotated_iou, weighted_loss

TINY = dict(depth=2, base_channels=8, tile_in=124, optimizer="adam", lr=3e-3, dropout=0.0)


def _instance_crops(images, inst, idx):
    """Images ``idx`` cropped to 128 px, labels in instance mode (1 = background, >= 2 nuclei)."""
    crop = inst[idx, :128, :128]
    return images[idx, :128, :128], np.where(crop > 0, crop.astype(np.int32) + 1, 1)


@pytest.fixture(scope="module")
def nuclei(nuclei_sample):
    """Two bundled DSB images (DSB 18 and 61: ~20 nuclei each in the crop, some touching)."""
    return _instance_crops(*nuclei_sample, [3, 5])


@pytest.fixture(scope="module")
def dsb_nuclei(dsb):
    """DSB images 18 and 47 (~20 nuclei each in the crop, some touching): the images the learning
    thresholds below were measured on; a few dozen tiny steps learn some image pairs far slower."""
    return _instance_crops(*dsb, [18, 47])


def drain(gen):
    events = []
    while True:
        try:
            events.append(next(gen))
        except StopIteration as stop:
            return events, stop.value


def test_training_learns_nuclei(dsb_nuclei):
    img, lab = dsb_nuclei
    events, res = drain(iter_train(TrainConfig(label_mode="instance", steps=60, **TINY), img, lab))
    steps = [e for e in events if e.kind == "step"]
    assert [e.step for e in steps] == list(range(1, 61))
    assert events[-1].kind == "finished" and events[-1].state is TrainState.DONE
    assert res.state is TrainState.DONE and res.steps_done == 60
    first = np.mean([loss for _, loss in res.history[:10]])
    last = np.mean([loss for _, loss in res.history[-10:]])
    assert last < 0.7 * first
    pred = predict(res.best_model(), img[0])
    fg_iou = annotated_iou(pred, (lab[0] >= 2).astype(np.int64), 2)
    assert fg_iou > 0.6  # far above chance after 60 tiny steps
    assert all(e.eta >= 0 for e in steps)


def test_sparse_labels_only_annotated_pixels_count(nuclei):
    img, lab = nuclei
    sparse = np.zeros_like(lab)
    sparse[0, 40:60, :] = lab[0, 40:60, :]  # one painted stripe on one slice
    res = train(TrainConfig(label_mode="instance", steps=5, **TINY), img, sparse)
    assert res.info.training["n_train_slices"] == 1


def test_weighted_loss_ignores_unannotated_pixels():
    logits = torch.zeros(1, 2, 4, 4)
    target = torch.full((1, 4, 4), -1, dtype=torch.int64)
    target[0, 0, 0] = 1
    w = torch.ones(1, 4, 4)
    loss = weighted_loss(logits, target, w)
    assert loss.item() == pytest.approx(np.log(2), rel=1e-5)
    w[0, 1:, :] = 100.0  # weights of ignored pixels must not matter
    assert weighted_loss(logits, target, w).item() == pytest.approx(np.log(2), rel=1e-5)


def test_reproducible_with_seed_on_cpu(nuclei):
    img, lab = nuclei
    cfg = TrainConfig(label_mode="instance", steps=4, seed=3, **TINY)
    a, b = train(cfg, img, lab), train(cfg, img, lab)
    assert [loss for _, loss in a.history] == [loss for _, loss in b.history]
    c = train(TrainConfig(label_mode="instance", steps=4, seed=4, **TINY), img, lab)
    assert [loss for _, loss in a.history] != [loss for _, loss in c.history]


def test_cancel_stops_after_current_step_and_returns_result(nuclei):
    img, lab = nuclei
    cancel = threading.Event()
    gen = iter_train(TrainConfig(label_mode="instance", steps=1000, **TINY), img, lab, cancel=cancel)
    for ev in gen:
        if ev.step == 3:
            cancel.set()
            break
    events, res = drain(gen)
    assert res.state is TrainState.STOPPED and res.steps_done == 3
    assert events[-1].state is TrainState.STOPPED
    # best and last states are both kept
    assert set(res.best_state) == set(res.last_state)


def test_validation_preview_best_state_and_semantic_mode(nuclei):
    img, inst = nuclei
    sem = np.where(inst >= 2, 2, 1)  # semantic: 1 = background class, 2 = nucleus class
    cfg = TrainConfig(label_mode="semantic", steps=6, val_every=3, val_fraction=0.5, preview_every=2, **TINY)
    events, res = drain(iter_train(cfg, img, sem, preview=(0, 1)))
    vals = [e for e in events if e.kind == "validation"]
    assert [e.step for e in vals] == [3, 6] and all(0 <= e.val_metric <= 1 for e in vals)
    previews = [e for e in events if e.kind == "preview"]
    assert len(previews) == 3 and previews[0].preview.shape == (128, 128)
    assert res.best_step in (3, 6) and res.best_metric == max(v.val_metric for v in vals)
    assert res.info.training["n_val_slices"] == 1
    assert res.model.n_classes == 2


def test_save_fine_tune_new_head_and_resume(tmp_path, nuclei):
    img, lab = nuclei
    res = train(TrainConfig(label_mode="instance", steps=3, **TINY), img, lab)
    best = res.save(tmp_path / "a.safetensors")
    last = res.save(tmp_path / "b.safetensors", which="last")
    m = load_model(best)
    assert m.info.label_mode == "instance" and m.info.training["steps_done"] == 3
    # fine-tune with a 3-class (border) head: the head is re-initialised, the rest kept
    ft = train(TrainConfig(label_mode="instance", border_class=True, steps=2, init=str(best), **TINY), img, lab)
    assert ft.model.n_classes == 3
    torch.testing.assert_close(ft.model.down[0][0].weight.shape, m.down[0][0].weight.shape)
    assert "new 3-class head" in ft.info.training["start"]
    # fine-tuning that 3-class model again keeps its border class and head without being told to,
    # so keep_prior can distil from it (a 2-class config would throw the head away)
    third = tmp_path / "c.safetensors"
    ft.save(third)
    again = train(TrainConfig(label_mode="instance", steps=1, init=str(third), keep_prior=1.0, **TINY), img, lab)
    assert again.model.n_classes == 3 and again.info.border_class
    assert "new" not in again.info.training["start"] and "keep_prior 1.00" in again.info.training["start"]
    assert TrainConfig(border_class=None, init=str(best)).settled().border_class is False
    assert TrainConfig(border_class=False, init=str(third)).settled().border_class is False
    # resume continues the step count with the optimizer state
    rs = train(TrainConfig(label_mode="instance", steps=5, resume=str(last), **TINY), img, lab)
    assert rs.steps_done == 5 and len(rs.history) == 2


def test_bad_input_messages(nuclei):
    img, lab = nuclei
    cfg = TrainConfig(label_mode="instance", steps=1, **TINY)
    with pytest.raises(ValueError, match="nothing is annotated"):
        train(cfg, img, np.zeros_like(lab))
    with pytest.raises(ValueError, match="shape"):
        train(cfg, img, lab[:, :100])
    with pytest.raises(ValueError, match="tile size 122 gives no valid output.*120 and 124"):
        train(TrainConfig(**{**TINY, "tile_in": 122}), img, lab)
    bad = img.astype(np.float32)
    bad[0, 5, 5] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        train(cfg, bad, lab)
    with pytest.raises(ValueError, match="one labels array per image"):
        train(cfg, [img, img], [lab])
    with pytest.raises(ValueError, match="learning rate"):
        TrainConfig(lr=-1)
    with pytest.raises(ValueError, match="class"):
        train(TrainConfig(label_mode="semantic", n_classes=2, steps=1, **TINY), img, np.where(lab > 3, 3, lab))


def test_prior_loss_is_zero_for_the_teacher_and_ignores_annotated_pixels():
    from napari_unet.core.train.losses import prior_loss

    g = torch.Generator().manual_seed(0)
    t = torch.randn(1, 2, 8, 8, generator=g)
    target = torch.full((1, 8, 8), -1)
    assert prior_loss(t, t, target).item() == pytest.approx(0.0, abs=1e-6)
    s = torch.randn(1, 2, 8, 8, generator=g)
    assert prior_loss(s, t, target).item() > 0
    target[:] = 0  # everything annotated: the prior has nothing to say
    assert prior_loss(s, t, target).item() == 0.0
    target[0, :4] = -1  # only the unannotated half counts
    s2 = s.clone()
    s2[..., 4:, :] = 100.0  # wildly different on annotated pixels: no effect
    assert prior_loss(s2, t, target).item() == pytest.approx(prior_loss(s, t, target).item(), rel=1e-5)


def test_kept_start_loss_counts_each_pixel_once():
    """A stroke pixel weighs as much as an unpainted one: with 1 painted pixel of 64, the loss is
    (its cross-entropy + keep_prior x the KL summed over the other 63) / 64; dense labels give eq. 2 alone."""
    from napari_unet.core.train.losses import kept_start_loss, prior_loss

    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(1, 2, 8, 8, generator=g), torch.randn(1, 2, 8, 8, generator=g)
    w = torch.ones(1, 8, 8)
    target = torch.full((1, 8, 8), -1)
    target[0, 0, 0] = 1
    ce = -torch.log_softmax(s, 1)[0, 1, 0, 0]
    kl_sum = prior_loss(s, t, target) * 63
    assert kept_start_loss(s, t, target, w, 0.5).item() == pytest.approx(((ce + 0.5 * kl_sum) / 64).item(), rel=1e-5)
    dense = torch.zeros(1, 8, 8, dtype=torch.long)
    assert kept_start_loss(s, t, dense, w, 1.0).item() == pytest.approx(weighted_loss(s, dense, w).item(), rel=1e-6)


def test_keep_prior_keeps_the_starting_model_where_nobody_painted(tmp_path, dsb_nuclei):
    """Fine-tuning on a few strokes: a user paints one 4 px stripe of background. Without keep_prior
    the model forgets every nucleus (strokes never show it one); with it, the unpainted pixels keep
    the starting model's prediction (the forgetting measured at real size in docs/accuracy.md)."""
    img, lab = dsb_nuclei
    start = train(TrainConfig(label_mode="instance", steps=150, **TINY), img, lab).last_model()
    before = predict(start, img[1])
    truth = lab[1] > 1
    assert (before == 1).sum() > 0.6 * truth.sum()  # a start that really finds nuclei (IoU ~0.8)
    path = save_model(tmp_path / "start.safetensors", start)
    strokes = np.zeros_like(lab)
    strokes[0, 60:64, :] = 1  # background only
    kept = {}
    for keep in (0.0, 1.0):
        res = train(TrainConfig(label_mode="instance", steps=30, init=str(path), keep_prior=keep, **TINY), img, strokes)
        if keep:
            assert "kept where you did not paint" in res.info.training["start"]
        after = predict(res.last_model(), img[1])
        kept[keep] = float(((after == 1) & (before == 1)).sum() / (before == 1).sum())
    # measured with 1 and 2 threads, seeds 0/1, lr 3e-3 and 1e-2: without 0.0 every time, with 0.27-0.65
    assert kept[0.0] < 0.05 and kept[1.0] > 0.2, kept


class _Vanishing:
    """A lazy stack whose file disappears mid-run (a network drive, an unplugged disk)."""

    def __init__(self, a):
        self.a, self.shape, self.dtype, self.ndim, self.gone = a, a.shape, a.dtype, a.ndim, False

    def __len__(self):
        return len(self.a)

    def __getitem__(self, key):
        if self.gone:
            raise OSError("stack.tif: the file went away")
        return self.a[key]

    def __array__(self, dtype=None, copy=None):
        return self[...].astype(dtype) if dtype is not None else self[...]


def test_a_crash_is_an_event_that_keeps_the_weights(tmp_path, nuclei):
    """A crash mid-run arrives as a 'crashed' event (state CRASHED) carrying the error and the weights
    trained so far, then the error itself is raised: nothing trained is lost."""
    img, lab = nuclei
    stack = _Vanishing(img)
    cfg = TrainConfig(label_mode="instance", steps=20, preview_every=4, **TINY)
    gen = iter_train(cfg, stack, lab, preview=(0, 1))
    events = []
    with pytest.raises(OSError, match="went away"):
        for ev in gen:
            events.append(ev)
            if ev.kind == "step" and ev.step == 2:
                stack.gone = True  # the preview at step 4 reads the stack again
    crash = events[-1]
    assert crash.kind == "crashed" and crash.state is TrainState.CRASHED and isinstance(crash.error, OSError)
    assert crash.result.steps_done == 4 and crash.result.state is TrainState.CRASHED
    saved = load_model(crash.result.save(tmp_path / "kept.safetensors", which="last"))
    assert saved.info.training["state"] == "crashed" and saved.info.training["steps_done"] == 4
    torch.testing.assert_close(saved.state_dict(), crash.result.last_state)


def test_one_painted_class_is_warned(nuclei):
    img, lab = nuclei
    for only, what in ((np.where(lab == 1, 1, 0), "only background"), (np.where(lab >= 2, lab, 0), "only object")):
        events, _ = drain(iter_train(TrainConfig(label_mode="instance", steps=1, **TINY), img, only))
        (start,) = [e for e in events if e.kind == "start"]
        assert what in start.warning
    events, _ = drain(iter_train(TrainConfig(label_mode="instance", steps=1, **TINY), img, lab))
    assert not [e for e in events if e.kind == "start"][0].warning


def test_live_feed_adds_strokes_without_a_restart(em_sample):
    """Strokes painted during a run reach the training data: new slices join, repainted ones are replaced."""
    from napari_unet.core.train.events import TrainState

    img, lab, _ = em_sample
    image = img[:3, :128, :128]
    labels = np.zeros(image.shape, np.uint16)
    labels[0, 10:40, 10:40] = 1
    labels[0, 60:90, 60:90] = 2
    later = np.zeros((128, 128), np.uint16)
    later[5:50, 5:50], later[70:120, 70:120] = 1, 2
    sent = []

    def feed():
        if len(sent) == 0 and steps_seen[0] >= 2:
            sent.append(1)
            return [(0, 2, later.copy())]  # slice 2 painted mid-run
        return []

    steps_seen = [0]
    cfg = TrainConfig(depth=2, base_channels=4, tile_in=92, steps=6, device="cpu", val_fraction=0)
    events = []
    gen = iter_train(cfg, image, labels, feed=feed)
    try:
        while True:
            ev = next(gen)
            events.append(ev)
            if ev.kind == "step":
                steps_seen[0] = ev.step
    except StopIteration as stop:
        result = stop.value
    live = [e for e in events if e.kind == "live"]
    assert len(live) == 1 and live[0].message.startswith("1 painted slice(s) joined")
    assert live[0].step >= 2 and result.state is TrainState.DONE and result.steps_done == 6
    assert result.info.training["n_train_slices"] == 1  # counted at the start; the live slice joined later


def test_auto_start_yields_a_scoring_event_per_candidate_before_start(nuclei):
    """init='auto' scores every candidate for seconds: each one is announced, then 'start' says the pick."""
    from napari_unet.core.train import start

    img, lab = nuclei
    cfg = TrainConfig(
        label_mode="instance", init="auto", keep_prior=None, lr=None, steps=1, tile_in=316, base_channels=8
    )
    events, _ = drain(iter_train(cfg, img[0], lab[0]))
    kinds = [e.kind for e in events]
    n = len(start.default_candidates())
    assert kinds[:n] == ["scoring"] * n and kinds[n] == "start"
    scoring = events[:n]
    assert [e.step for e in scoring] == list(range(n)) and {e.total for e in scoring} == {n}
    assert scoring[0].message.startswith(f"scoring start 1/{n}: ") and scoring[-1].message.endswith("scratch")
