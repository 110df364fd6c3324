"""Model registry: names, head sizes, parameter budget, local backbone weights."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from edgeskd.errors import ArtifactError, UsageError  # noqa: E402
from edgeskd.models import count_parameters, create_model, list_models  # noqa: E402


def test_registry_lists_teachers_and_students():
    assert {"resnet18", "resnet50", "efficientnet_b0"} <= set(list_models("teacher"))
    assert {"tiny_cnn", "mobilenet_v3_small"} <= set(list_models("student"))
    with pytest.raises(ValueError, match="valid names: .*resnet18.*tiny_cnn"):
        create_model("vgg99", 2)
    with pytest.raises(UsageError):
        create_model("vgg99", 2)


@pytest.mark.parametrize("name", ["resnet18", "efficientnet_b0", "mobilenet_v3_small", "tiny_cnn"])
def test_heads_emit_requested_logits(name):
    m = create_model(name, 6).eval()
    with torch.no_grad():
        assert m(torch.zeros(2, 3, 32, 32)).shape == (2, 6)


def test_tiny_cnn_is_edge_friendly_and_tenth_of_teacher():
    s = create_model("tiny_cnn", 6)
    assert count_parameters(s) <= 500_000
    assert count_parameters(s) * 10 <= count_parameters(create_model("resnet18", 6))
    kinds = {type(m).__name__ for m in s.modules()}
    assert not kinds & {"Hardswish", "Hardsigmoid", "SqueezeExcitation", "SiLU"}
    assert {"Conv2d", "BatchNorm2d", "ReLU"} <= kinds


def test_pretrained_backbone_from_local_file(tmp_path):
    src = create_model("tiny_cnn", 6)
    torch.save(src.state_dict(), tmp_path / "w.pt")
    dst = create_model("tiny_cnn", 2, pretrained=tmp_path / "w.pt")
    torch.testing.assert_close(dst.features[0][0].weight, src.features[0][0].weight)
    assert dst.head.weight.shape == (2, 256)  # the head (other size) keeps its own init
    (tmp_path / "bad.pt").write_bytes(b"nope")
    with pytest.raises(ArtifactError):
        create_model("tiny_cnn", 2, pretrained=tmp_path / "bad.pt")
    torch.save(create_model("resnet18", 2).state_dict(), tmp_path / "other.pt")
    with pytest.raises(ArtifactError, match="no tensor"):
        create_model("tiny_cnn", 2, pretrained=tmp_path / "other.pt")
    with pytest.raises(UsageError, match="does not exist"):
        create_model("tiny_cnn", 2, pretrained=tmp_path / "missing.pt")


@pytest.mark.parametrize("size, side", [(32, 4), (48, 6), (64, 4), (96, 6), (128, 4), (224, 7)])
def test_student_down_sampling_fits_the_input(size, side):
    """The default student keeps a last feature map of ~4-7 px at every input size (a fixed 32x
    student ends at 1x1 on a 32-px input), with the same weights shapes at every size."""
    s = create_model("tiny_cnn", 6, img_size=size).eval()
    with torch.no_grad():
        fmap = s.features(torch.zeros(1, 3, size, size))
        assert tuple(fmap.shape[-2:]) == (side, side)
        assert s(torch.zeros(2, 3, size, size)).shape == (2, 6)
    assert count_parameters(s) * 10 <= count_parameters(create_model("resnet18", 6, img_size=size))
    kinds = {type(m).__name__ for m in s.modules()}
    assert kinds <= {"TinyCNN", "Sequential", "Conv2d", "BatchNorm2d", "ReLU", "AdaptiveAvgPool2d", "Linear"}
    assert all(m.groups == 1 for m in s.modules() if isinstance(m, torch.nn.Conv2d))
    shapes = {k: v.shape for k, v in create_model("tiny_cnn", 6, img_size=224).state_dict().items()}
    assert {k: v.shape for k, v in s.state_dict().items()} == shapes


def test_downsampling_steps_and_default_size():
    from edgeskd.models.registry import DEFAULT_IMG_SIZE, downsampling_steps

    assert [downsampling_steps(s) for s in (16, 32, 64, 96, 128, 224, 512)] == [2, 3, 4, 4, 5, 5, 5]
    assert create_model("tiny_cnn", 2).strides == create_model("tiny_cnn", 2, img_size=DEFAULT_IMG_SIZE).strides
    with pytest.raises(UsageError):
        downsampling_steps(1)


@pytest.mark.parametrize("size, side", [(32, 4), (48, 6), (64, 4), (224, 7)])
def test_half_width_student_and_small_input_teacher(size, side):
    """tiny_cnn_050 is tiny_cnn at half width (same strides, a quarter of the parameters); wide_cnn
    (a teacher for small inputs) fits its down-sampling to the input too, ending at ~3x3 (~7x7 at
    224 px), with at least 10x the half-width student's parameters; wide_cnn_050 is wide_cnn at half width."""
    full, half = create_model("tiny_cnn", 6, img_size=size), create_model("tiny_cnn_050", 6, img_size=size)
    assert half.strides == full.strides
    assert 0.2 < count_parameters(half) / count_parameters(full) < 0.3
    with torch.no_grad():
        assert tuple(half.features(torch.zeros(1, 3, size, size)).shape[-2:]) == (side, side)
        teacher = create_model("wide_cnn", 8, img_size=size).eval()
        fmap = teacher.features(torch.zeros(1, 3, size, size))
        assert teacher(torch.zeros(2, 3, size, size)).shape == (2, 8)
    assert 2 <= fmap.shape[-1] <= min(side, 7)
    assert count_parameters(teacher) >= 10 * count_parameters(half)
    # wide_cnn_050 (the fast preset's teacher): wide_cnn's strides at half width, still 3x the student
    small = create_model("wide_cnn_050", 8, img_size=size)
    assert small.strides == teacher.strides
    assert 0.2 < count_parameters(small) / count_parameters(teacher) < 0.3
    assert count_parameters(small) >= 3 * count_parameters(half)
