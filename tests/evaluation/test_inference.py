"""Inference modes: slide and multi-scale reduce to whole-image inference where they must."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from segkit.evaluation import inference
from segkit.evaluation.inference import Inference, slide_logits, window_starts


def tiny_model(num_classes: int = 4) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, num_classes, 3, padding=1),
    )
    return model.eval()


def test_window_starts_cover_the_side_and_end_at_the_border():
    assert window_starts(10, 4, 3) == [0, 3, 6]
    assert window_starts(10, 4, 4) == [0, 4, 6]  # last window shifted back to end at 10
    assert window_starts(8, 8, 5) == [0]
    assert window_starts(5, 8, 5) == [0]


@torch.no_grad()
def test_slide_with_crop_not_smaller_than_image_equals_whole():
    model, images = tiny_model(), torch.randn(1, 3, 20, 28)
    whole = Inference()(model, images)
    assert torch.equal(Inference(crop_size=[20, 28], stride=[10, 10])(model, images), whole)
    assert torch.equal(Inference(crop_size=[64, 64], stride=[32, 32])(model, images), whole)
    assert torch.equal(whole, F.log_softmax(model(images), dim=1))


@torch.no_grad()
def test_multiscale_one_scale_without_flip_equals_plain():
    model, images = tiny_model(), torch.randn(2, 3, 20, 28)
    plain = F.log_softmax(model(images), dim=1)
    assert torch.equal(Inference(scales=[1.0], flip=False)(model, images), plain)


@torch.no_grad()
def test_multiscale_flip_averages_probabilities_of_every_view():
    model, images = tiny_model(), torch.randn(2, 3, 16, 24)
    calls = []

    def counting_model(x):
        calls.append(x.shape[0])
        return model(x)

    got = Inference(scales=[1.0, 0.5], flip=True)(counting_model, images).exp()
    assert calls == [4, 4]  # per scale, one pass: 2 images + their 2 mirrors
    views = []
    for scale in (1.0, 0.5):
        small = F.interpolate(images, scale_factor=scale, mode="bilinear") if scale != 1 else images
        for flip in (False, True):
            logits = model(small.flip(-1)).flip(-1) if flip else model(small)
            logits = F.interpolate(logits, size=(16, 24), mode="bilinear")
            views.append(logits.softmax(1))
    torch.testing.assert_close(got, torch.stack(views).mean(0), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got.sum(1), torch.ones(2, 16, 24))


@torch.no_grad()
def test_slide_on_image_larger_than_crop_gives_full_size_output():
    model, images = tiny_model(5), torch.randn(2, 3, 37, 50)
    out = Inference(crop_size=[16, 20], stride=[10, 12])(model, images)
    assert out.shape == (2, 5, 37, 50)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize(("window_batch", "expected_calls"), [(None, [24]), (5, [5] * 4 + [4])])
@torch.no_grad()
def test_batched_slide_equals_per_window_loop(window_batch, expected_calls):
    model, images = tiny_model(), torch.randn(2, 3, 23, 31)
    crop, stride = (10, 12), (7, 8)
    calls = []

    def counting_model(x):
        calls.append(x.shape[0])
        return model(x)

    got = slide_logits(counting_model, images, crop, stride, window_batch=window_batch)
    # reference: one window at a time, accumulated by hand
    expected = torch.zeros(2, 4, 23, 31)
    count = torch.zeros(1, 1, 23, 31)
    ys, xs = [0, 7, 13], [0, 8, 16, 19]  # by hand: last windows end at 23 and 31
    for y in ys:
        for x in xs:
            expected[:, :, y : y + 10, x : x + 12] += model(images[:, :, y : y + 10, x : x + 12])
            count[:, :, y : y + 10, x : x + 12] += 1
    assert count.min() >= 1
    torch.testing.assert_close(got, expected / count, rtol=1e-5, atol=1e-5)
    # 12 windows per image, 2 images: all 24 in one pass, or in chunks across the images
    assert calls == expected_calls


@torch.no_grad()
def test_default_window_batch_follows_the_pixel_budget(monkeypatch):
    model, images = tiny_model(), torch.randn(2, 3, 23, 31)
    expected = slide_logits(model, images, (10, 12), (7, 8), window_batch=1)
    monkeypatch.setattr(inference, "WINDOW_PIXELS", 250)  # 2 windows of 10x12 per pass
    calls = []

    def counting_model(x):
        calls.append(x.shape[0])
        return model(x)

    got = slide_logits(counting_model, images, (10, 12), (7, 8))
    assert calls == [2] * 12
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_flip_on_large_whole_images_runs_one_pass_per_view(monkeypatch):
    model, images = tiny_model(), torch.randn(2, 3, 16, 24)
    one_pass = Inference(flip=True)(model, images)
    monkeypatch.setattr(inference, "WINDOW_PIXELS", 1000)  # < 2 x 2 x 16 x 24 pixels
    calls = []

    def counting_model(x):
        calls.append(x.shape[0])
        return model(x)

    got = Inference(flip=True)(counting_model, images)
    assert calls == [2, 2]  # the images, then their mirrors
    torch.testing.assert_close(got, one_pass, rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_slide_keeps_channels_last_windows():
    model, images = tiny_model(), torch.randn(2, 3, 23, 31)
    seen = []

    def recording_model(x):
        seen.append(x.is_contiguous(memory_format=torch.channels_last))
        return model(x)

    expected = slide_logits(model, images, (10, 12), (7, 8))
    got = slide_logits(
        recording_model, images.contiguous(memory_format=torch.channels_last), (10, 12), (7, 8)
    )
    assert seen == [True]
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_bad_settings_are_rejected():
    with pytest.raises(ValueError, match="scales"):
        Inference(scales=[])
    with pytest.raises(ValueError, match="crop_size is null"):
        Inference(stride=[4, 4])
    with pytest.raises(ValueError, match="crop_size"):
        Inference(crop_size=[0, 4])
    with pytest.raises(ValueError, match="window_batch"):
        Inference(crop_size=[4, 4], window_batch=0)
