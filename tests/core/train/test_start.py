"""Where fine-tuning starts (core/start.py): agreement, domain similarity, and init='auto' on real crops."""

from dataclasses import replace

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_unet.core.data.intensity import percentiles, scale_intensity
from napari_unet.core.drain import drain
from napari_unet.core.models.checkpoint import resolve_model_path
from napari_unet.core.models.load import read_info
from napari_unet.core.train import start
from napari_unet.core.train.config import TrainConfig
from napari_unet.core.train.loop import iter_train


def strokes(inst: np.ndarray, rng, *, n_bg: int = 6, length: int = 24, thin_bg: bool = False) -> np.ndarray:
    """A user's strokes from instance truth (0 = background, 1..N objects), in instance mode
    (1 = background, >= 2 objects, 0 = not painted): a 3 px horizontal stroke through the
    innermost point of every object, and ``n_bg`` strokes well inside the background
    (``thin_bg``: 1 px strokes along it, for membranes)."""
    out = np.zeros(inst.shape, np.int32)
    H, W = inst.shape

    def stroke(mask, y, x, value):
        band = np.zeros_like(mask)
        band[max(y - 1, 0) : y + 2, max(x - length // 2, 0) : x + length // 2] = True
        out[band & mask] = value

    for i in np.unique(inst[inst > 0]):
        obj = inst == i
        if obj.sum() < 30:
            continue
        dist = ndi.distance_transform_edt(obj)
        y, x = np.unravel_index(np.argmax(dist), obj.shape)
        stroke(ndi.binary_erosion(obj, iterations=2) | (dist == dist.max()), y, x, int(i) + 1)
    if thin_bg:
        from skimage.morphology import skeletonize

        bg = skeletonize(inst == 0)
    else:
        bg = ndi.binary_erosion(inst == 0, iterations=4)
    pts = np.argwhere(bg)
    yy, xx = np.ogrid[:H, :W]
    for y, x in pts[rng.choice(len(pts), size=min(n_bg, len(pts)), replace=False)]:
        out[bg & ((yy - y) ** 2 + (xx - x) ** 2 <= (length // 2) ** 2) & (out == 0)] = 1
    return out


def normalised(images):
    return [scale_intensity(im.astype(np.float32), *percentiles(im.astype(np.float32))) for im in images]


@pytest.fixture(scope="module")
def vnc(shared_data):
    import tifffile

    d = shared_data / "drosophila_vnc_sstem"
    return tifffile.imread(d / "raw.tif", key=[0, 4]), tifffile.imread(d / "labels.tif", key=[0, 4])


def auto_start(images, labels, **kw):
    """The 'start' event and the result of a 1-step run with init='auto' (the widget's and the CLI's default)."""
    events = []
    cfg = TrainConfig(label_mode="instance", init="auto", keep_prior=None, lr=None, steps=1, tile_in=316, **kw)
    res = drain(iter_train(cfg, images, labels), events.append)
    (ev,) = [e for e in events if e.kind == "start"]
    return ev, res


# ----------------------------------------------------------------------------- the rule


def test_prior_weight_ramps_from_contradiction_to_agreement():
    assert start.prior_weight(0.17) == 0 == start.prior_weight(start.CONTRADICT)
    assert start.prior_weight(start.KEEP_FULL) == 1 == start.prior_weight(0.99)
    assert 0 < start.prior_weight((start.CONTRADICT + start.KEEP_FULL) / 2) < 1
    assert start.prior_weight(None) == 0 and start.prior_weight(float("nan")) == 0


def test_choose_prefers_agreement_then_similar_images_then_scratch():
    def C(name, agreement=None, similarity=None, note=""):  # worst class: as a contradiction (0.55) looks
        worst = None if agreement is None else (0.1 if agreement < 0.6 else agreement - 0.05)
        return start.Candidate(name, agreement, similarity, note, worst)

    agreeing = [C("a", 0.8, 0.85), C("b", 0.95, 0.9), C("c", 0.5, 0.99), C("own", 0.97, None), C(start.SCRATCH)]
    pick = start.choose(agreeing)  # a model file without a signature still counts
    assert pick.name == "own" and pick.keep_prior == 1 and "agrees 0.97" in pick.reason
    pick = start.choose(agreeing[:3])
    assert pick.name == "b" and pick.keep_prior == 1
    # agreeing by accident on other images (nuclei on EM) is no start: the similar one is
    similar = [C("nuclei", 0.8, 0.2), C("em", 0.5, 0.9), C(start.SCRATCH)]
    pick = start.choose(similar)
    assert pick.name == "em" and pick.keep_prior == 0 and "images like yours" in pick.reason
    # a model being corrected: strokes over its mistakes lower the balanced agreement (0.74), not the
    # worst class below contradiction (0.51): it is kept, fully
    corrected = [start.Candidate("round0", 0.74, 1.0, "", 0.51), C("em", 0.5, 0.9), C(start.SCRATCH)]
    pick = start.choose(corrected)
    assert pick.name == "round0" and pick.keep_prior == 1
    pick = start.choose([C("nuclei", 0.8, 0.2), C("d", None, 0.3, "other classes"), C(start.SCRATCH)])
    assert pick.name == start.SCRATCH and pick.keep_prior == 0 and "other classes" in pick.reason


def test_settle_decides_every_start_by_one_rule():
    """start.settle: keep_prior, the note, the message and the warning for auto, explicit and scratch starts
    (no model is run here: the auto start's pick was scored already, the others measure nothing)."""
    own = start.Candidate("own", 0.9, 0.95, "", 0.4, zoom=0.71)
    choice = start.choose([own, start.Candidate(start.SCRATCH)])
    auto = TrainConfig(init="own", zoom=choice.zoom, keep_prior=None)
    got = start.settle(auto, [], None, built="fine-tuning own", new_head=False, choice=choice)
    assert got.keep_prior == choice.keep_prior == start.prior_weight(0.4) and got.kept
    assert (got.init, got.zoom, got.agreement, got.worst, got.warning) == ("own", 0.71, 0.9, 0.4, "")
    assert got.message == choice.reason and got.note.endswith(f"(auto: {choice.reason})")
    assert got.note.startswith("fine-tuning own; images zoomed x0.71 to the model's object size; it agrees 0.90")
    given = start.settle(replace(auto, keep_prior=0.0), [], None, built="", new_head=False, choice=choice)
    assert given.keep_prior == 0.0 and not given.kept
    scratch = start.settle(TrainConfig(keep_prior=None, zoom=1.0), [], None, built="from scratch", new_head=True)
    assert (scratch.keep_prior, scratch.kept, scratch.message, scratch.note) == (
        0.0,
        False,
        "from scratch",
        "from scratch",
    )
    # an explicit start with another head measures nothing, and keeps nothing however asked
    other = TrainConfig(init="em-membrane", keep_prior=1.0, zoom=1.0)
    head = start.settle(other, [], None, built="fine-tuning em-membrane: new 3-class head (was 2)", new_head=True)
    assert head.agreement is None and not head.kept and "keep_prior ignored" in head.note
    assert (
        start.zoom_for(TrainConfig(), None, None) == 1.0 and start.zoom_for(TrainConfig(zoom=2.0), choice, None) == 2.0
    )


def test_balanced_accuracy_weighs_classes_equally():
    target = np.array([0, 0, 0, 0, 1, -1])
    pred = np.array([0, 0, 0, 0, 0, 1])  # all background right, the one object wrong
    acc, per = start.balanced_accuracy(pred, target)
    assert per == {0: 1.0, 1: 0.0} and acc == 0.5


# ----------------------------------------------------------------------------- real images


def test_domain_signature_tells_em_from_fluorescence(isbi, dsb, vnc):
    em = read_info(resolve_model_path("em-membrane")).training["domain"]
    nuc = read_info(resolve_model_path("nuclei")).training["domain"]
    isbi_held_out = start.domain_signature(normalised(isbi[0][25:27]))
    vnc_sig = start.domain_signature(normalised(vnc[0]))
    dsb_held_out = start.domain_signature(normalised(dsb[0][80:84]))
    assert start.domain_similarity(em, isbi_held_out) > 0.9
    assert start.domain_similarity(em, vnc_sig) > start.SIMILAR  # another EM preparation
    assert start.domain_similarity(nuc, dsb_held_out) > 0.9
    for a, b in ((em, dsb_held_out), (nuc, isbi_held_out), (nuc, vnc_sig)):
        assert start.domain_similarity(a, b) < 0.5
    assert start.domain_similarity(em, None) is None


def test_auto_starts_from_the_model_that_knows_the_task(isbi, rng):
    image, _, inst = isbi
    img = image[25:27, :256, :256]
    lab = np.stack([strokes(i, rng, n_bg=20, thin_bg=True) for i in inst[25:27, :256, :256]])
    assert 0.005 < (lab > 0).mean() < 0.1  # strokes, not masks
    ev, res = auto_start(img, lab)
    assert "start from em-membrane" in ev.message and "already agrees" in ev.message and not ev.warning
    cfg = res.info.training["config"]
    assert cfg["init"] == "em-membrane" and cfg["keep_prior"] == 1.0 and cfg["lr"] == 1e-4
    assert res.info.training["start_worst_class"] >= start.KEEP_FULL
    assert "auto:" in res.info.training["start"]


def test_auto_starts_from_nuclei_on_nuclei(dsb, rng):
    image, inst = dsb
    lab = np.stack([strokes(i, rng) for i in inst[80:83]])
    ev, res = auto_start(image[80:83], lab)
    assert "start from nuclei" in ev.message
    assert res.info.training["config"]["init"] == "nuclei" and res.model.n_classes == 3  # its border head kept


def test_auto_on_a_new_task_keeps_the_features_of_the_same_kind_of_images(vnc, rng):
    """Mitochondria in another EM stack: the EM model calls them membrane (it contradicts the strokes),
    but it was trained on EM: start from its features, do not keep its prediction."""
    raw, labels = vnc
    img = raw[:, :384, :384]
    inst = np.stack([ndi.label(lab == 191)[0] for lab in labels[:, :384, :384]])
    lab = np.stack([strokes(i, rng, n_bg=12) for i in inst])
    assert (lab >= 2).any()
    ev, res = auto_start(img, lab)
    assert "start from em-membrane" in ev.message and "images like yours" in ev.message
    cfg = res.info.training["config"]
    assert cfg["init"] == "em-membrane" and cfg["keep_prior"] == 0.0 and cfg["lr"] == 1e-4
    assert res.info.training["start_worst_class"] <= start.CONTRADICT


def test_explicit_start_that_contradicts_the_strokes_warns(vnc, rng):
    raw, labels = vnc
    inst = np.stack([ndi.label(lab == 191)[0] for lab in labels[:1, :256, :256]])
    lab = np.stack([strokes(i, rng, n_bg=8) for i in inst])
    events = []
    cfg = TrainConfig(label_mode="instance", init="em-membrane", keep_prior=None, steps=1, tile_in=316)
    res = drain(iter_train(cfg, raw[:1, :256, :256], lab), events.append)
    (ev,) = [e for e in events if e.kind == "start"]
    assert "contradicts your strokes" in ev.warning
    assert res.info.training["config"]["keep_prior"] == 0.0
    steps = [e for e in events if e.kind == "step"]
    assert steps and steps[-1].agreement is not None and 0 <= steps[-1].agreement <= 1


def test_auto_snaps_the_tile_to_the_chosen_models_depth(em_sample, rng):
    image, _, inst = em_sample
    lab = strokes(inst[0], rng)
    # 124 is valid for the depth-2 scratch net this config would build, not for the depth-4 EM model
    cfg = TrainConfig(label_mode="instance", init="auto", keep_prior=None, steps=1, depth=2, tile_in=124)
    res = drain(iter_train(cfg, image[0], lab))
    assert res.info.training["config"]["init"] == "em-membrane"
    assert res.info.training["tile_in"] == 188  # the smallest valid depth-4 tile


def test_auto_and_resume_do_not_mix(tmp_path):
    with pytest.raises(ValueError, match="auto"):
        TrainConfig(init="auto", resume=str(tmp_path / "x.safetensors"))


def test_auto_may_start_from_a_similar_model_of_another_label_mode(em_sample, rng, tmp_path, monkeypatch):
    """A semantic-mode model of the same images is 'other classes' (no agreement): chosen for its features,
    trained without its prior, and the missing agreement breaks nothing."""
    from napari_unet.core.models.checkpoint import save_model
    from napari_unet.core.models.load import load_model

    em = load_model("em-membrane")
    em.info.label_mode = "semantic"
    own = str(save_model(tmp_path / "semantic-em.safetensors", em))
    monkeypatch.setattr(start, "default_candidates", lambda extra=(): [own, start.SCRATCH])
    image, _, inst = em_sample
    lab = strokes(inst[0], rng, n_bg=20, thin_bg=True)
    ev, res = auto_start(image[:1], lab[None])
    assert "start from semantic-em" in ev.message and "images like yours" in ev.message
    assert res.info.training["config"]["keep_prior"] == 0.0 and res.info.training["start_worst_class"] is None


def test_rank_models_puts_the_model_of_the_images_domain_first():
    """The bundled samples: each ranks its own domain's shipped model first; EM is a poor match for nuclei
    images and the other way round."""
    from napari_unet._sample_data import load_em_sample, load_nuclei_sample

    em, nuclei = load_em_sample()[0], load_nuclei_sample()[0]
    first, second = start.rank_models(em)
    assert (first.name, second.name) == ("em-membrane", "nuclei")
    assert not first.poor and second.poor and first.similarity > 0.9
    first, second = start.rank_models(nuclei[:2])
    assert (first.name, second.name) == ("nuclei", "em-membrane") and not first.poor and second.poor
    assert first.label_mode == "instance" and "nucleus" in first.classes
    assert "image similarity" in first.describe()


def test_rank_models_puts_models_that_cannot_take_the_image_last():
    rgb = np.random.default_rng(0).random((48, 48, 3)).astype(np.float32)
    ranked = start.rank_models(rgb, channel_axis=-1)
    assert ranked and all(not m.fits and m.poor and "3" in m.describe() for m in ranked)
