"""Mask R-CNN (He et al., ICCV 2017, https://arxiv.org/abs/1703.06870) from torchvision.

Faster R-CNN (an RPN proposes boxes, RoIAlign pools each box, a head classifies and refines
it) plus a per-RoI FCN that predicts a ``14x14`` -> ``28x28`` binary mask for the class.
:func:`mask_rcnn` assembles torchvision's :class:`~torchvision.models.detection.MaskRCNN`
from its public parts so that the backbone, the anchors, RoIAlign and the mask head are
config values:

* ``variant="v1"``: the paper's heads (two-FC box head, four-conv mask head), as
  ``maskrcnn_resnet50_fpn``; ``variant="v2"``: Li et al. 2021 ("Benchmarking detection
  transfer learning with ViT"), as ``maskrcnn_resnet50_fpn_v2``: a two-conv RPN head and
  BatchNorm in the box (4 conv + 1 FC) and mask heads.
* Backbone: any torchvision ResNet/ResNeXt with an FPN (``resnet18`` is the light CPU option).

Deviations from torchvision's builders: images arrive already normalised by the dataset
(``data.mean``/``data.std``), so the model's own normalisation is the identity; and a
backbone trained from scratch uses ordinary (not frozen) BatchNorm, as torchvision does.

Input/output contract (not the semantic ``[B,C,H,W]`` one): ``model(images, targets)`` in
train mode takes a list of ``[3, H, W]`` float images of any size and a list of target
dicts (``boxes`` float ``[N, 4]`` xyxy pixels, ``labels`` int64 ``[N]`` in ``1..C-1``,
``masks`` uint8 ``[N, H, W]``) and returns a dict of five losses; in eval mode
``model(images)`` returns one dict per image with ``boxes [K, 4]``, ``labels [K]``,
``scores [K]`` and ``masks`` float ``[K, 1, H, W]`` (probabilities at input size). Images are
resized internally so that the short side is ``min_size`` (long side at most ``max_size``)
and predictions are mapped back to the input size.

Weights, the same keys as every segkit model (:mod:`segkit.models.weights`), no weights by
default and nothing downloaded: ``encoder_weights`` initialises the ResNet from a torchvision
ImageNet state dict (a local file, or a torchvision weights name such as ``IMAGENET1K_V1``
whose file is already in the torch hub cache); ``weights_path`` is a state dict of this model
(a segkit checkpoint, or torchvision's COCO ``maskrcnn_resnet50_fpn`` state dict, whose
91-class predictors load with ``weights_strict=False`` for another class count). With
``encoder_weights`` (v1) the backbone's batch norms are frozen (torchvision's
``FrozenBatchNorm2d``, as its fine-tuning builders), keeping the pretrained statistics; a
``weights_path`` alone leaves them trainable ``BatchNorm2d`` (which loads the same tensors).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn
from torchvision.models import get_model
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import (
    FastRCNNConvFCHead,
    FastRCNNPredictor,
    TwoMLPHead,
)
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.rpn import RPNHead
from torchvision.ops import FrozenBatchNorm2d, MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from segkit.models.weights import (
    load_state,
    read_state_dict,
    torchvision_weights_file,
)

VARIANTS = ("v1", "v2")
FPN_LEVELS = ("0", "1", "2", "3")  # RoIAlign reads P2-P5; "pool" (P6) only feeds the RPN


def mask_rcnn(
    num_classes: int,
    variant: str = "v1",
    backbone: str = "resnet50",
    trainable_layers: int = 5,
    encoder_weights: str | None = None,
    min_size: int = 800,
    max_size: int = 1333,
    fpn_channels: int = 256,
    anchor_sizes: Sequence[int] = (32, 64, 128, 256, 512),
    box_roi_output_size: int = 7,
    mask_roi_output_size: int = 14,
    roi_sampling_ratio: int = 2,
    mask_head_layers: Sequence[int] = (256, 256, 256, 256),
    mask_head_dilation: int = 1,
    box_head_width: int = 1024,
    rpn_proposals_train: int = 2000,
    rpn_proposals_test: int = 1000,
    box_batch_size_per_image: int = 512,
    box_score_threshold: float = 0.05,
    box_detections_per_img: int = 100,
) -> MaskRCNN:
    """Build a Mask R-CNN (see the module docstring for the input/output contract).

    Args:
        num_classes: classes including background (index 0), i.e. ``data.num_classes``.
        variant: ``"v1"`` (paper heads) or ``"v2"`` (two-conv RPN, BatchNorm conv heads).
        backbone: torchvision ResNet name (``resnet18``, ``resnet50``, ``resnext50_32x4d``...).
        trainable_layers: ResNet stages trained, counted from the top (0-5; 5 = all).
        encoder_weights: the ResNet's ImageNet initialisation: a local torchvision state
            dict of ``backbone``, or a torchvision weights name (``"IMAGENET1K_V1"``) read
            from the torch hub cache only; ``None``: random.
        min_size: short image side after the model's internal resize.
        max_size: cap on the long side after the internal resize.
        fpn_channels: FPN output channels (the heads' input width).
        anchor_sizes: anchor side in input pixels for each of the 5 FPN levels (P2-P6);
            3 aspect ratios (0.5, 1, 2) each.
        box_roi_output_size: RoIAlign output side for the box head.
        mask_roi_output_size: RoIAlign output side for the mask head (the mask is twice that).
        roi_sampling_ratio: RoIAlign sampling points per bin side.
        mask_head_layers: channels of the mask head's 3x3 convs.
        mask_head_dilation: dilation of those convs.
        box_head_width: width of the box head's fully connected layer(s).
        rpn_proposals_train: RPN proposals kept per image in training, before NMS (per FPN
            level) and after it.
        rpn_proposals_test: the same at inference.
        box_batch_size_per_image: RoIs sampled per image to train the box head (25% positive).
        box_score_threshold: detections below this score are dropped at inference.
        box_detections_per_img: at most this many detections per image.

    Returns:
        torchvision ``MaskRCNN``.

    Raises:
        WeightsError: weights were asked for and are not on disk, or do not fit.
        ValueError: an unknown variant, or anchor sizes that do not fit the FPN.
    """
    if variant not in VARIANTS:
        raise ValueError(f"model.variant={variant!r}; choose one of {VARIANTS}.")
    if len(anchor_sizes) != len(FPN_LEVELS) + 1:
        raise ValueError(
            f"model.anchor_sizes has {len(anchor_sizes)} values; give one per FPN level "
            f"({len(FPN_LEVELS) + 1}: P2-P6), e.g. [32, 64, 128, 256, 512]."
        )
    imagenet = None
    if encoder_weights is not None:  # resolved first: a missing file fails before the build
        imagenet = torchvision_weights_file(encoder_weights, backbone)
    # Frozen BatchNorm keeps pretrained statistics (v1); from scratch it would be the identity.
    # Decided by encoder_weights alone, so a model rebuilt without its weight sources has the
    # same modules (weights_path tensors fit either: frozen BN only lacks num_batches_tracked).
    norm = FrozenBatchNorm2d if imagenet is not None and variant == "v1" else nn.BatchNorm2d
    body = get_model(backbone, weights=None, norm_layer=norm)
    if imagenet is not None:
        key = "model.encoder_weights"
        state = read_state_dict(imagenet, key=key)
        load_state(body, state, str(imagenet), strict=True, allow_unused=True, key=key)
    stage2 = body.inplanes // 8  # layer1 width: 64 (basic blocks) or 256 (bottlenecks)
    features = BackboneWithFPN(
        body,
        return_layers={f"layer{i + 1}": level for i, level in enumerate(FPN_LEVELS)},
        in_channels_list=[stage2 * 2**i for i in range(len(FPN_LEVELS))],
        out_channels=fpn_channels,
        extra_blocks=LastLevelMaxPool(),  # P6 for the RPN
        norm_layer=nn.BatchNorm2d if variant == "v2" else None,
    )
    anchors = AnchorGenerator(
        sizes=tuple((s,) for s in anchor_sizes),
        aspect_ratios=((0.5, 1.0, 2.0),) * len(anchor_sizes),
    )
    num_anchors = anchors.num_anchors_per_location()[0]
    box_pool = MultiScaleRoIAlign(list(FPN_LEVELS), box_roi_output_size, roi_sampling_ratio)
    mask_pool = MultiScaleRoIAlign(list(FPN_LEVELS), mask_roi_output_size, roi_sampling_ratio)
    if variant == "v1":
        rpn_head = RPNHead(fpn_channels, num_anchors)
        box_head = TwoMLPHead(fpn_channels * box_roi_output_size**2, box_head_width)
        head_norm = None
    else:
        rpn_head = RPNHead(fpn_channels, num_anchors, conv_depth=2)
        box_head = FastRCNNConvFCHead(
            (fpn_channels, box_roi_output_size, box_roi_output_size),
            [fpn_channels] * 4,
            [box_head_width],
            norm_layer=nn.BatchNorm2d,
        )
        head_norm = nn.BatchNorm2d
    mask_head = MaskRCNNHeads(
        fpn_channels, list(mask_head_layers), mask_head_dilation, norm_layer=head_norm
    )
    # Passing both predictors (so num_classes=None) lets every width be a config value.
    box_predictor = FastRCNNPredictor(box_head_width, num_classes)
    width = mask_head_layers[-1]
    mask_predictor = MaskRCNNPredictor(width, width, num_classes)
    model = MaskRCNN(
        features,
        num_classes=None,
        min_size=min_size,
        max_size=max_size,
        image_mean=[0.0, 0.0, 0.0],  # the dataset normalises with data.mean/std
        image_std=[1.0, 1.0, 1.0],
        rpn_anchor_generator=anchors,
        rpn_head=rpn_head,
        box_roi_pool=box_pool,
        mask_roi_pool=mask_pool,
        rpn_pre_nms_top_n_train=rpn_proposals_train,
        rpn_post_nms_top_n_train=rpn_proposals_train,
        rpn_pre_nms_top_n_test=rpn_proposals_test,
        rpn_post_nms_top_n_test=rpn_proposals_test,
        box_batch_size_per_image=box_batch_size_per_image,
        box_score_thresh=box_score_threshold,
        box_detections_per_img=box_detections_per_img,
        box_head=box_head,
        box_predictor=box_predictor,
        mask_head=mask_head,
        mask_predictor=mask_predictor,
    )
    _freeze_backbone(model, trainable_layers)
    return model


def _freeze_backbone(model: MaskRCNN, trainable_layers: int) -> None:
    """Train only the top ``trainable_layers`` ResNet stages (as torchvision's builders)."""
    if not 0 <= trainable_layers <= 5:
        raise ValueError(f"model.trainable_layers={trainable_layers}; give 0-5 (5 = all).")
    stages = ["layer4", "layer3", "layer2", "layer1", "conv1"][:trainable_layers]
    if trainable_layers == 5:
        stages.append("bn1")
    for name, parameter in model.backbone.body.named_parameters():
        if not name.startswith(tuple(stages)):
            parameter.requires_grad_(False)
