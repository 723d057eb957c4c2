"""RetinaFace (ResNet-50) face detection, for face restoration.

Reads ``detection_Resnet50_Final.pth``, the detector A1111's GFPGAN and CodeFormer use (through facexlib),
with its tensor names: ``body.*`` (a torchvision ResNet-50 cut after ``layer4``), ``fpn.*``, ``ssh1``–``ssh3``
and the ``ClassHead`` / ``BboxHead`` / ``LandmarkHead`` lists, two anchors per position on strides 8, 16
and 32. The network takes a BGR image minus the per-channel mean (104, 117, 123), as it was trained, and
each detection is a box, a score and five landmarks (eyes, nose, mouth corners) in image pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

MIN_SIZES = ((16, 32), (64, 128), (256, 512))
STEPS = (8, 16, 32)
VARIANCE = (0.1, 0.2)
BGR_MEAN = (104.0, 117.0, 123.0)
WIDTH = 256  # FPN / SSH channels of the ResNet-50 model


@dataclass(frozen=True)
class Face:
    box: tuple[float, float, float, float]  # x1, y1, x2, y2
    score: float
    landmarks: np.ndarray  # 5 x 2: left eye, right eye, nose, left mouth corner, right mouth corner


def _conv_bn(cin: int, cout: int, kernel: int, relu: bool) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, kernel, 1, kernel // 2, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if relu:
        layers.append(nn.ReLU(inplace=True))  # leaky with slope 0 at this width
    return nn.Sequential(*layers)


class _FPN(nn.Module):
    def __init__(self, widths: tuple[int, int, int], out: int) -> None:
        super().__init__()
        self.output1 = _conv_bn(widths[0], out, 1, True)
        self.output2 = _conv_bn(widths[1], out, 1, True)
        self.output3 = _conv_bn(widths[2], out, 1, True)
        self.merge1 = _conv_bn(out, out, 3, True)
        self.merge2 = _conv_bn(out, out, 3, True)

    def forward(self, c3: torch.Tensor, c4: torch.Tensor, c5: torch.Tensor) -> list[torch.Tensor]:
        p5 = self.output3(c5)
        p4 = self.merge2(self.output2(c4) + F.interpolate(p5, size=c4.shape[-2:], mode="nearest"))
        p3 = self.merge1(self.output1(c3) + F.interpolate(p4, size=c3.shape[-2:], mode="nearest"))
        return [p3, p4, p5]


class _SSH(nn.Module):
    """Context module: 3×3, 5×5 (two 3×3) and 7×7 (three 3×3) branches, concatenated."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv3X3 = _conv_bn(width, width // 2, 3, False)
        self.conv5X5_1 = _conv_bn(width, width // 4, 3, True)
        self.conv5X5_2 = _conv_bn(width // 4, width // 4, 3, False)
        self.conv7X7_2 = _conv_bn(width // 4, width // 4, 3, True)
        self.conv7x7_3 = _conv_bn(width // 4, width // 4, 3, False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch5 = self.conv5X5_1(x)
        branch7 = self.conv7x7_3(self.conv7X7_2(branch5))
        return F.relu(torch.cat([self.conv3X3(x), self.conv5X5_2(branch5), branch7], dim=1))


class _Head(nn.Module):
    def __init__(self, width: int, values: int, anchors: int = 2) -> None:
        super().__init__()
        self.values = values
        self.conv1x1 = nn.Conv2d(width, anchors * values, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1x1(x).permute(0, 2, 3, 1)
        return out.reshape(out.shape[0], -1, self.values)


class RetinaFace(nn.Module):
    def __init__(self, width: int = WIDTH) -> None:
        super().__init__()
        from torchvision.models import resnet50
        from torchvision.models._utils import IntermediateLayerGetter

        self.body = IntermediateLayerGetter(resnet50(weights=None), {"layer2": 1, "layer3": 2, "layer4": 3})
        self.fpn = _FPN((512, 1024, 2048), width)
        self.ssh1, self.ssh2, self.ssh3 = _SSH(width), _SSH(width), _SSH(width)
        self.ClassHead = nn.ModuleList(_Head(width, 2) for _ in range(3))
        self.BboxHead = nn.ModuleList(_Head(width, 4) for _ in range(3))
        self.LandmarkHead = nn.ModuleList(_Head(width, 10) for _ in range(3))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Box offsets (N, A, 4), face probabilities (N, A) and landmark offsets (N, A, 10)."""
        c3, c4, c5 = self.body(x).values()
        levels = self.fpn(c3, c4, c5)
        features = [ssh(p) for ssh, p in zip((self.ssh1, self.ssh2, self.ssh3), levels, strict=True)]
        boxes = torch.cat([head(f) for head, f in zip(self.BboxHead, features, strict=True)], dim=1)
        scores = torch.cat([head(f) for head, f in zip(self.ClassHead, features, strict=True)], dim=1)
        landmarks = torch.cat([head(f) for head, f in zip(self.LandmarkHead, features, strict=True)], dim=1)
        return boxes, F.softmax(scores, dim=-1)[..., 1], landmarks


def priors(height: int, width: int) -> torch.Tensor:
    """Anchor boxes (cx, cy, w, h), relative to the image, in the order the heads emit them."""
    rows = []
    for step, sizes in zip(STEPS, MIN_SIZES, strict=True):
        fh, fw = math.ceil(height / step), math.ceil(width / step)
        ys, xs = torch.meshgrid(torch.arange(fh), torch.arange(fw), indexing="ij")
        cx = ((xs.reshape(-1, 1) + 0.5) * step / width).expand(-1, len(sizes))
        cy = ((ys.reshape(-1, 1) + 0.5) * step / height).expand(-1, len(sizes))
        w = torch.tensor([s / width for s in sizes]).expand_as(cx)
        h = torch.tensor([s / height for s in sizes]).expand_as(cx)
        rows.append(torch.stack([cx, cy, w, h], dim=-1).reshape(-1, 4))
    return torch.cat(rows).float()


def decode(
    offsets: torch.Tensor, landmark_offsets: torch.Tensor, anchors: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Boxes (x1, y1, x2, y2) and landmarks (5 × (x, y)), relative to the image."""
    centre = anchors[:, :2] + offsets[:, :2] * VARIANCE[0] * anchors[:, 2:]
    size = anchors[:, 2:] * torch.exp(offsets[:, 2:] * VARIANCE[1])
    boxes = torch.cat([centre - size / 2, centre + size / 2], dim=1)
    points = landmark_offsets.reshape(-1, 5, 2) * VARIANCE[0] * anchors[:, None, 2:] + anchors[:, None, :2]
    return boxes, points.reshape(-1, 10)


def load_retinaface(path: Path, device: torch.device) -> RetinaFace:
    """The detector from ``path`` (``ValueError`` with the reason if the file does not fit)."""
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{path.name} holds no tensors")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    model = RetinaFace()
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise ValueError(
            f"{path.name} is not a RetinaFace ResNet-50 detector "
            f"({len(missing)} tensors missing, e.g. {missing[:2]}; {len(unexpected)} unexpected)"
        )
    return model.eval().requires_grad_(False).to(device)


@torch.inference_mode()
def detect_faces(
    model: RetinaFace,
    rgb: np.ndarray,
    *,
    threshold: float = 0.8,
    nms_iou: float = 0.4,
    min_side: int = 640,
) -> list[Face]:
    """Faces in an RGB uint8 image, best first.

    Small images are enlarged so their shorter side is ``min_side`` (faces in a 512² picture are then
    found at the detector's trained scale); coordinates are given in the original image's pixels.
    """
    from torchvision.ops import nms

    height, width = rgb.shape[:2]
    scale = max(1.0, min_side / min(height, width))
    device = next(model.parameters()).device
    tensor = torch.from_numpy(np.ascontiguousarray(rgb[:, :, ::-1])).float().permute(2, 0, 1)[None]
    if scale > 1.0:
        size = (round(height * scale), round(width * scale))
        tensor = F.interpolate(tensor, size=size, mode="bilinear", align_corners=False)
    tensor = tensor - torch.tensor(BGR_MEAN).view(1, 3, 1, 1)
    offsets, scores, landmark_offsets = model(tensor.to(device))
    anchors = priors(tensor.shape[2], tensor.shape[3]).to(device)
    boxes, points = decode(offsets[0].float(), landmark_offsets[0].float(), anchors)
    keep = scores[0] > threshold
    boxes, points, kept_scores = boxes[keep], points[keep], scores[0][keep].float()
    if not len(kept_scores):
        return []
    along = torch.tensor([width, height], device=device, dtype=torch.float32)
    boxes = boxes * along.repeat(2)
    points = points * along.repeat(5)
    order = nms(boxes, kept_scores, nms_iou)
    faces = []
    for i in order.tolist():
        x1, y1, x2, y2 = (float(v) for v in boxes[i].tolist())
        faces.append(Face((x1, y1, x2, y2), float(kept_scores[i]), points[i].reshape(5, 2).cpu().numpy()))
    return faces
