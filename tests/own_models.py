"""Models that are not HF task classes, as Trainer users bring them: modules returning {"loss", "logits"} (or a
tuple with the loss first), and look-alikes of torchvision's ResNet, MobileNetV3 and ViT (torchvision itself does not
import beside the torch CI installs). Their heads are where torchvision puts them: `fc`, `classifier` (a
Sequential), `heads.head`, and an FCN's `classifier` on its feature map."""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

VOCAB = 99
WIDTH = 32


class TextClassifier(nn.Module):
    """Embedding, mean over tokens, a linear `head`: one class per example (or one output: regression)."""

    def __init__(self, num_outputs: int = 2, tuple_output: bool = False) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, WIDTH)
        self.encoder = nn.Sequential(nn.Linear(WIDTH, WIDTH), nn.GELU())
        self.head = nn.Linear(WIDTH, num_outputs)
        self.tuple_output = tuple_output

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None):
        logits = self.head(self.encoder(self.embed(input_ids)).mean(dim=1))
        if self.head.out_features == 1:
            logits = logits.squeeze(-1)
            loss = None if labels is None else F.mse_loss(logits, labels.float())
        elif labels is not None and labels.is_floating_point():
            loss = F.binary_cross_entropy_with_logits(logits, labels)
        else:
            loss = None if labels is None else F.cross_entropy(logits, labels)
        if self.tuple_output:
            return (loss, logits) if loss is not None else (logits,)
        return {"loss": loss, "logits": logits}


class TokenTagger(nn.Module):
    """Embedding, a contextual layer, a linear `tagger` on every token: one class per position, -100 ignored."""

    def __init__(self, num_tags: int = 2) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, WIDTH)
        self.mix = nn.Conv1d(WIDTH, WIDTH, 3, padding=1)
        self.tagger = nn.Linear(WIDTH, num_tags)

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None):
        hidden = self.mix(self.embed(input_ids).transpose(1, 2)).transpose(1, 2).relu()
        logits = self.tagger(hidden)
        loss = None if labels is None else F.cross_entropy(logits.flatten(0, 1), labels.flatten())
        return {"loss": loss, "logits": logits}


class TinyResNet(nn.Module):
    """torchvision's ResNet layout: conv stem, a residual block, global average pool, `fc`."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.layer1 = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn1(self.conv1(x)).relu()
        x = (x + self.layer1(x)).relu()
        return self.fc(torch.flatten(self.avgpool(x), 1))


class TinyMobileNetV3(nn.Module):
    """torchvision's MobileNetV3 layout: `features`, pool, `classifier` = Linear, Hardswish, Dropout, Linear."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.Hardswish())
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Linear(8, 16), nn.Hardswish(inplace=True), nn.Dropout(0.2, inplace=True), nn.Linear(16, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


class TinyViT(nn.Module):
    """torchvision's VisionTransformer layout: `conv_proj` patches, a class token, `encoder`, `heads.head`."""

    def __init__(self, num_classes: int, patch: int = 8) -> None:
        super().__init__()
        self.conv_proj = nn.Conv2d(3, WIDTH, patch, stride=patch)
        self.class_token = nn.Parameter(torch.zeros(1, 1, WIDTH))
        self.encoder = nn.TransformerEncoderLayer(WIDTH, 2, 64, dropout=0.0, batch_first=True)
        self.heads = nn.Sequential(OrderedDict(head=nn.Linear(WIDTH, num_classes)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        patches = self.conv_proj(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.class_token.expand(len(x), -1, -1), patches], dim=1)
        return self.heads(self.encoder(tokens)[:, 0])


class ImageClassifier(nn.Module):
    """A vision network wrapped the way Trainer takes it: `net` gives logits, the wrapper adds the loss."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None):
        logits = self.net(pixel_values)
        return {"loss": None if labels is None else F.cross_entropy(logits, labels), "logits": logits}


class TinyFCN(nn.Module):
    """Built like torchvision's FCN: a strided backbone, `classifier` (FCNHead: 3x3 conv, batch norm, ReLU, dropout,
    1x1 conv to the classes) on its feature map, logits upsampled to the image, returned as {"out": ...}; with
    `auxiliary`, `aux_classifier` (another FCNHead) on an earlier stage's feature map, returned as "aux"."""

    def __init__(self, num_classes: int, auxiliary: bool = False, dropout: float = 0.1) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.ReLU())
        self.backbone = nn.Sequential(nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU())
        self.classifier = self._fcn_head(32, num_classes, dropout)
        self.aux_classifier = self._fcn_head(16, num_classes, dropout) if auxiliary else None

    @staticmethod
    def _fcn_head(channels: int, num_classes: int, dropout: float) -> nn.Sequential:
        return nn.Sequential(
            nn.Conv2d(channels, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(), nn.Dropout(dropout),
            nn.Conv2d(16, num_classes, 1),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        early = self.stem(x)
        heads = {"out": self.classifier(self.backbone(early))}
        if self.aux_classifier is not None:
            heads["aux"] = self.aux_classifier(early)
        return {
            name: F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
            for name, logits in heads.items()
        }


class Segmenter(nn.Module):
    """A torchvision-style segmentation network wrapped for Trainer: pixel labels, 255 ignored, the auxiliary head's
    loss (if any) added with `auxiliary_weight`, as torchvision's recipes train them."""

    def __init__(self, net: nn.Module, auxiliary_weight: float = 0.5) -> None:
        super().__init__()
        self.net = net
        self.auxiliary_weight = auxiliary_weight

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None):
        outputs = self.net(pixel_values)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(outputs["out"], labels, ignore_index=255)
            if "aux" in outputs:
                loss = loss + self.auxiliary_weight * F.cross_entropy(outputs["aux"], labels, ignore_index=255)
        return {"loss": loss, "logits": outputs["out"]}


VISION_NETWORKS = {
    "resnet": (TinyResNet, "net.fc"),
    "mobilenet_v3": (TinyMobileNetV3, "net.classifier"),
    "vit": (TinyViT, "net.heads.head"),
}
