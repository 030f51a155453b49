import math

import pytest
import torch

from napari_unet.core.network.unet import (
    UNet,
    input_size_for_output,
    is_valid_size,
    margin,
    n_parameters,
    nearest_valid_sizes,
    output_size,
    valid_input_sizes,
)


def test_paper_network_size_and_parameters():
    m = UNet()
    assert n_parameters(m) == 31_030_658
    assert output_size(572) == 388
    assert m.output_size(572) == 388
    assert margin(4) == 92


def test_paper_forward_shape_on_meta_device():
    # Full-size forward without spending memory/time: shapes only.
    with torch.device("meta"):
        m = UNet()
        y = m(torch.empty(1, 1, 572, 572))
    assert tuple(y.shape) == (1, 2, 388, 388)


@pytest.mark.parametrize("depth", [1, 2, 3, 4])
def test_valid_sizes_match_real_forward(depth):
    m = UNet(depth=depth, base_channels=2).eval()
    for s in valid_input_sizes(depth, stop=min_stop(depth))[:4]:
        with torch.no_grad():
            y = m(torch.zeros(1, 1, s, s + 2**depth))
        assert y.shape[-2] == output_size(s, depth)
        assert y.shape[-1] == output_size(s + 2**depth, depth)
        assert s - y.shape[-2] == 2 * margin(depth)


def min_stop(depth):
    return 8 * 2**depth + 200


def test_invalid_size_names_nearest_valid_sizes():
    with pytest.raises(ValueError, match="input 570 gives no valid output for depth 4.*556 and 572"):
        output_size(570, 4)
    assert nearest_valid_sizes(570, 4) == (556, 572)
    assert not is_valid_size(570, 4)
    assert is_valid_size(572, 4)
    with pytest.raises(ValueError, match="nearest valid sizes are 188"):
        output_size(100, 4)


def test_input_size_for_output():
    assert input_size_for_output(388, 4) == 572
    assert output_size(input_size_for_output(389, 4)) >= 389
    assert input_size_for_output(30, 2, "same") == 32


def test_he_initialisation_std():
    torch.manual_seed(0)
    m = UNet(base_channels=64)
    conv = m.down[1][0]  # 64 -> 128, 3x3
    expected = math.sqrt(2.0 / (9 * 64))
    assert conv.weight.std().item() == pytest.approx(expected, rel=0.02)
    assert torch.all(conv.bias == 0)


def test_dropout_at_end_of_contracting_path():
    m = UNet(depth=2, base_channels=4, dropout=0.5)
    # element-wise as the paper's (Caffe) dropout: in one feature map some values are dropped, others kept
    torch.manual_seed(0)
    out = m.dropout.train()(torch.ones(1, 16, 8, 8))
    per_map = (out == 0).float().mean(dim=(2, 3))
    assert ((per_map > 0) & (per_map < 1)).all() and 0.35 < (out == 0).float().mean() < 0.65
    assert torch.equal(m.dropout.eval()(torch.ones(1, 16, 8, 8)), torch.ones(1, 16, 8, 8))
    assert UNet(depth=2, base_channels=4, dropout=0).dropout.__class__.__name__ == "Identity"


def test_same_padding_keeps_size_and_backward_works():
    m = UNet(depth=3, base_channels=4, padding="same", n_classes=3)
    x = torch.randn(2, 1, 64, 48, requires_grad=True)
    y = m(x)
    assert y.shape == (2, 3, 64, 48)
    y.sum().backward()
    assert m.down[0][0].weight.grad is not None


def test_bad_arguments():
    with pytest.raises(ValueError, match="padding"):
        UNet(padding="full")
    with pytest.raises(ValueError, match="dropout"):
        UNet(dropout=1.5)


def test_he_init_counts_the_inputs_each_unit_sees():
    """std sqrt(2/N): N = 9 C_in for the 3x3 convs, C_in for the 2x2 stride-2 up-convolutions."""

    torch.manual_seed(0)
    net = UNet(1, 2, depth=3, base_channels=32)
    for m in net.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)) and m.weight.numel() > 2000:
            n = m.in_channels * (1 if isinstance(m, torch.nn.ConvTranspose2d) else m.kernel_size[0] ** 2)
            assert abs(m.weight.std().item() / math.sqrt(2 / n) - 1) < 0.1, m


@pytest.mark.parametrize(("in_channels", "n_classes", "depth", "base"), [(1, 2, 4, 64), (2, 3, 2, 4), (3, 5, 1, 2)])
def test_parameter_shapes_are_the_built_networks(in_channels, n_classes, depth, base):
    """The arithmetic a model file's header is sized by gives the state dict of the network built."""
    from napari_unet.core.network.unet import n_parameters, parameter_shapes

    net = UNet(in_channels, n_classes, depth=depth, base_channels=base)
    shapes = parameter_shapes(net.config)
    assert shapes == {k: tuple(v.shape) for k, v in net.state_dict().items()}
    assert sum(math.prod(s) for s in shapes.values()) == n_parameters(net)
