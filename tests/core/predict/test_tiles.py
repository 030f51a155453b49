import numpy as np
import pytest
import torch

from napari_unet.core.network.device import resolve_device
from napari_unet.core.network.unet import UNet
from napari_unet.core.predict.config import PredictConfig
from napari_unet.core.predict.events import TileEvent
from napari_unet.core.predict.tiles import auto_tile_out, iter_predict, plan_tiles, predict, predict_whole


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return UNet(depth=3, base_channels=4, n_classes=3, dropout=0.0).eval()


@pytest.fixture(scope="module")
def em(em_planes):
    img = em_planes[:3].astype(np.float32) / 255.0
    return img


@pytest.mark.parametrize("shape", [(37, 1001), (700, 900), (5, 7), (129, 64)])
def test_tiled_equals_whole_image(net, em, shape):
    # real EM texture, tiled to an awkward size
    reps = (-(-shape[0] // 512), -(-shape[1] // 512))
    img = np.tile(em[0], reps)[: shape[0], : shape[1]]
    ref = predict_whole(net, img)
    for tile in (None, 64, (40, 100)):
        p = predict(net, img, tile_out=tile, output="probabilities", normalize=False)
        assert p.shape == ref.shape
        np.testing.assert_allclose(p, ref, atol=2e-5)
    lab = predict(net, img, tile_out=48, output="labels", normalize=False)
    assert (lab == ref.argmax(0)).mean() > 0.9999


def test_stack_slice_by_slice_equals_whole(net, em):
    stack = em[:, :200, :300]
    p = predict(net, stack, tile_out=72, output="probabilities", normalize=False)
    assert p.shape == (3, 3, 200, 300)
    for z in range(3):
        np.testing.assert_allclose(p[:, z], predict_whole(net, stack[z]), atol=2e-5)


def test_same_padding_model_tiles_near_seamlessly(em):
    torch.manual_seed(1)
    m = UNet(depth=2, base_channels=4, padding="same", dropout=0.0).eval()
    img = em[0, :300, :280]
    ref = predict_whole(m, img)
    p = predict(m, img, tile_out=64, output="probabilities", normalize=False)
    np.testing.assert_allclose(p, ref, atol=1e-4)


def test_tiles_start_on_pooling_grid(net):
    plan = plan_tiles((1001, 37), net, 60)
    step = 2**net.depth
    assert all(y % step == 0 for y in plan.ys) and all(x % step == 0 for x in plan.xs)
    assert plan.ys[-1] + plan.tile_out[0] >= 1001
    assert plan.tile_in[0] - plan.tile_out[0] == 2 * plan.context


def test_events_progress_and_out_array_written_tile_by_tile(net, em):
    img = em[0, :200, :200]
    out = np.full((200, 200), 255, dtype=np.uint8)
    gen = iter_predict(net, img, PredictConfig(tile_out=64, normalize=False), out=out)
    events = []
    while True:
        try:
            events.append(next(gen))
        except StopIteration as stop:
            res = stop.value
            break
    tiles = [e for e in events if e.kind == "tile"]
    assert isinstance(tiles[0], TileEvent)
    assert [e.done for e in tiles] == list(range(1, len(tiles) + 1))
    assert tiles[-1].total == len(tiles) > 1
    assert events[-1].kind == "slice"
    assert res is out and out.max() < 3


def test_cancel_between_tiles_keeps_done_part(net, em):
    img = em[0, :256, :256]
    out = np.full((256, 256), 255, dtype=np.uint8)
    gen = iter_predict(net, img, PredictConfig(tile_out=64, normalize=False), out=out)
    first = next(gen)
    gen.close()  # what a GUI worker's quit() does
    done = out[first.region]
    assert done.max() < 3  # the finished tile is there
    assert (out == 255).any()  # the rest was never written


def test_instances_are_unique_over_the_stack():
    # a "network" that copies its input: instances = connected components of bright blobs
    torch.manual_seed(0)
    net = UNet(depth=1, base_channels=2, dropout=0.0)
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
        net.head.bias.copy_(torch.tensor([0.0, -1.0]))
    img = np.zeros((2, 40, 40), np.float32)
    lab = predict(net, img, output="instances", normalize=False)
    assert lab.max() == 0  # all background
    # flip the bias: everything foreground -> one object per slice, ids 1 and 2
    with torch.no_grad():
        net.head.bias.copy_(torch.tensor([0.0, 1.0]))
    lab = predict(net, img, output="instances", normalize=False)
    assert set(np.unique(lab[0])) == {1} and set(np.unique(lab[1])) == {2}


def test_three_class_instances_grow_over_border():
    from napari_unet.core.data.labels import instances_from_semantic

    sem = np.zeros((20, 30), np.uint8)
    sem[2:10, 2:12] = 2
    sem[4:8, 4:10] = 1
    sem[2:10, 12:22] = 2
    sem[4:8, 14:20] = 1
    inst = instances_from_semantic(sem, 3)
    assert inst.max() == 2
    assert set(np.unique(inst[2:10, 2:12])) == {1} and set(np.unique(inst[2:10, 12:22])) == {2}


def test_tta_averages_eight_transforms(net, em):
    img = em[0, :100, :120]
    p = predict(net, img, output="probabilities", tta=True, normalize=False)
    assert p.shape == (3, 100, 120)
    np.testing.assert_allclose(p.sum(0), 1.0, atol=1e-5)
    plain = predict(net, img, output="probabilities", normalize=False)
    assert np.abs(p - plain).max() > 1e-4  # it really averaged other views
    # the average of the 8 views of a transposed image is the transposed average
    q = predict(net, np.ascontiguousarray(img[::-1]), output="probabilities", tta=True, normalize=False)[:, ::-1]
    assert np.abs(q - p).mean() < np.abs(plain - p).mean()


def test_channel_axis_and_bf16(em):
    torch.manual_seed(0)
    m = UNet(in_channels=2, depth=2, base_channels=4, dropout=0.0).eval()
    img = np.stack([em[0, :80, :90], em[1, :80, :90]], axis=-1)
    p = predict(m, img, channel_axis=-1, output="probabilities", normalize=False)
    assert p.shape == (2, 80, 90)
    lab32 = predict(m, img, channel_axis=-1, normalize=False)
    lab16 = predict(m, img, channel_axis=-1, normalize=False, precision="bf16")
    assert (lab32 == lab16).mean() > 0.9


def test_slices_subset_and_bad_input(net, em):
    out = predict(net, em[:, :64, :64], slices=[1], normalize=False)
    assert out.shape == (3, 64, 64)
    assert out[0].max() == 0 and out[2].max() == 0
    with pytest.raises(ValueError, match="out of range"):
        predict(net, em[:, :64, :64], slices=[5])
    for dtype in (np.uint8, np.uint16, np.float32):  # colour / channels last is no stack of 3-px-wide slices
        with pytest.raises(ValueError, match="3 channels last.*channel_axis=-1"):
            predict(net, np.zeros((64, 64, 3), dtype))
    with pytest.raises(ValueError, match=r"expects 1 input channel\(s\), the image has 2 channels: pick one"):
        predict(net, np.zeros((2, 64, 64), np.float32), channel_axis=0)
    with pytest.raises(ValueError, match="2D image"):
        predict(net, np.zeros((2, 2, 64, 64), np.float32))
    bad = em[0, :64, :64].copy()
    bad[3, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        predict(net, bad)
    with pytest.raises(ValueError, match="output"):
        predict(net, em[0, :64, :64], output="mask")
    with pytest.raises(ValueError, match="out has shape"):
        predict(net, em[0, :64, :64], out=np.zeros((10, 10), np.uint8))


def test_auto_tile_out_respects_memory_budget(net):
    from napari_unet.core.predict.tiles import bytes_per_pixel, tile_context

    dev = resolve_device("cpu")
    small = auto_tile_out((5000, 5000), net, dev, memory_budget=50 << 20)
    big = auto_tile_out((5000, 5000), net, dev, memory_budget=8 << 30)
    assert small[0] < big[0] <= 5000
    m = tile_context(net)  # the input tile, context included, fits the budget at the model's bytes per pixel
    assert (small[0] + 2 * m) * (small[1] + 2 * m) * bytes_per_pixel(net) <= 50 << 20
    assert auto_tile_out((100, 120), net, dev, memory_budget=8 << 30) == (100, 120)  # one tile


def test_lazy_array_like_input(net, em):
    class Lazy:
        """Only supports shape, dtype and integer indexing, like a zarr/dask stack."""

        def __init__(self, a):
            self.a, self.shape, self.dtype, self.reads = a, a.shape, a.dtype, 0

        def __getitem__(self, i):
            self.reads += 1
            return self.a[i]

    lz = Lazy(em[:, :64, :64])
    out = predict(net, lz, normalize=(0.0, 1.0))
    assert out.shape == (3, 64, 64) and lz.reads == 3


def test_instances_min_size_drops_specks_and_renumbers():
    from napari_unet.core.data.labels import instances_from_semantic

    sem = np.zeros((40, 40), np.uint8)
    sem[2:12, 2:12] = 1  # 100 px
    sem[20:22, 20:22] = 1  # 4 px speck
    sem[30:38, 30:38] = 1  # 64 px
    assert instances_from_semantic(sem, 2).max() == 3
    inst = instances_from_semantic(sem, 2, min_size=10)
    assert sorted(np.unique(inst)) == [0, 1, 2]
    assert inst[20, 20] == 0 and inst[5, 5] != inst[33, 33]
    three = sem.copy()
    three[2, 2:12] = 2  # a border row on the big object (3-class model)
    inst3 = instances_from_semantic(three, 3, min_size=10)
    assert inst3[2, 5] == inst3[5, 5] != 0 and inst3[20, 20] == 0


def test_min_size_default_comes_from_the_model(nuclei_sample):
    """The shipped nuclei model drops specks below its own min_size; min_size=0 keeps them."""
    from napari_unet.core.models.load import load_model

    m = load_model("nuclei")
    assert m.info.postprocess["min_size"] == 30
    stack = nuclei_sample[0]
    raw = predict(m, stack, output="instances", min_size=0)
    assert (np.bincount(raw.ravel())[1:] < 30).any()  # specks exist without the filter
    filtered = predict(m, stack, output="instances")
    sizes = np.bincount(filtered.ravel())[1:]
    assert sizes[sizes > 0].min() >= 30
    assert len(np.unique(filtered)) < len(np.unique(raw))
    with pytest.raises(ValueError, match="min_size"):
        predict(m, stack[0], output="instances", min_size=-1)


@pytest.mark.parametrize("tile_out", [1, 4, 7])
def test_tiles_smaller_than_the_grid_still_cover_the_image(tile_out):
    """Output tiles under 2**depth px still cover every pixel (placed 2**depth apart, most would be left unpredicted)."""
    torch.manual_seed(0)
    model = UNet(1, 2, depth=3, base_channels=2, padding="valid").eval()
    image = np.random.default_rng(0).random((37, 45)).astype(np.float32)
    whole = predict(model, image, output="probabilities", normalize=False, tile_out=64)
    small = predict(model, image, output="probabilities", normalize=False, tile_out=tile_out)
    np.testing.assert_allclose(small, whole, atol=1e-5)
    assert small[1].min() > 0  # every pixel predicted (a gap would be left at 0)


def test_semantic_models_with_three_classes_get_instances_per_class():
    """Classes 1 and 2 of a semantic model are two kinds of object, not interior and border."""
    from napari_unet.core.data.labels import instances_from_semantic

    sem = np.zeros((20, 20), np.int64)
    sem[2:8, 2:8] = 1  # a mitochondrion
    sem[2:8, 8:14] = 2  # a synapse touching it
    sem[12:18, 12:18] = 2
    per_class = instances_from_semantic(sem, 3, border_class=False)
    assert per_class.max() == 3 and len(np.unique(per_class[2:8, 2:14])) == 2
    # an instance model with a border class: the border pixels join the interior they surround
    grown = instances_from_semantic(sem, 3, border_class=True)
    assert grown.max() == 1 and (grown[2:8, 2:14] == 1).all()


def test_instance_ids_are_unique_across_slices_in_any_order():
    torch.manual_seed(0)
    model = UNet(1, 2, depth=2, base_channels=4, padding="valid").eval()
    stack = np.random.default_rng(1).random((3, 40, 40)).astype(np.float32)
    inst = predict(model, stack, output="instances", slices=[2, 0], normalize=False)
    ids = [set(np.unique(inst[z])) - {0} for z in (2, 0)]
    assert ids[0] and ids[1] and not ids[0] & ids[1]
    assert min(ids[1]) > max(ids[0])  # numbered in the order predicted
    assert not inst[1].any()  # a slice not asked for stays empty
