"""LaMa, the inpainting network of the ``inpaint_only+lama`` preprocessor: it fills the masked part of a
picture before the ControlNet inpaints it, so the diffusion starts from a plausible fill instead of the old
content (outpainting and object removal then blend better).

The network is Big LaMa's generator (Suvorov et al., "Resolution-robust Large Mask Inpainting with Fourier
Convolutions", 2021): a ResNet of 18 fast-Fourier-convolution blocks between three stride-2 convolutions and
three transposed ones. The module tree, and so every parameter name, follows the generator of the published
``ControlNetLama.pth`` (``model.<i>...``), which loads here without conversion; the preprocessor works as
sd-webui-controlnet's does: the picture is scaled so its short side is 256 (LaMa's training size), padded to
multiples of 64, filled, scaled back, and only the masked pixels take the fill.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

WORK_SIZE = 256  # the short side LaMa runs at
GLOBAL_RATIO = 0.75  # the share of channels in the Fourier (global) branch of the ResNet blocks


class FourierUnit(nn.Module):
    """A 1×1 convolution in the frequency domain: real and imaginary parts of the 2-D real FFT as channels."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv_layer = nn.Conv2d(channels * 2, channels * 2, kernel_size=1, bias=False)
        self.bn = nn.BatchNorm2d(channels * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        spectrum = torch.fft.rfftn(x.float(), dim=(-2, -1), norm="ortho")
        # [b, c, h, w'] complex → [b, c, 2, h, w'] → channels c0.re, c0.im, c1.re, ...
        parts = torch.stack((spectrum.real, spectrum.imag), dim=2).flatten(1, 2).to(x.dtype)
        parts = torch.relu(self.bn(self.conv_layer(parts)))
        parts = parts.unflatten(1, (-1, 2)).float()
        spectrum = torch.complex(parts[:, :, 0], parts[:, :, 1])
        return torch.fft.irfftn(spectrum, s=(height, width), dim=(-2, -1), norm="ortho").to(x.dtype)


class SpectralTransform(nn.Module):
    """The global branch's own path: 1×1 down to half the channels, a Fourier unit, 1×1 back up."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        half = out_channels // 2
        self.conv1 = nn.Sequential(
            nn.Conv2d(in_channels, half, kernel_size=1, bias=False), nn.BatchNorm2d(half), nn.ReLU()
        )
        self.fu = FourierUnit(half)
        self.conv2 = nn.Conv2d(half, out_channels, kernel_size=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        return self.conv2(x + self.fu(x))


Pair = tuple[torch.Tensor, torch.Tensor | None]  # (local channels, global channels or None)


class FFC(nn.Module):
    """A fast Fourier convolution: local and global channel groups, each mixed into both (global → global
    through the spectral transform; the others through ordinary convolutions, reflect-padded)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        ratio_in: float,
        ratio_out: float,
        *,
        stride: int = 1,
        padding: int = 0,
    ) -> None:
        super().__init__()
        in_global = int(in_channels * ratio_in)
        out_global = int(out_channels * ratio_out)
        in_local, out_local = in_channels - in_global, out_channels - out_global

        def conv(cin: int, cout: int) -> nn.Conv2d | None:
            if cin == 0 or cout == 0:
                return None
            return nn.Conv2d(cin, cout, kernel_size, stride, padding, bias=False, padding_mode="reflect")

        self.convl2l = conv(in_local, out_local)
        self.convl2g = conv(in_local, out_global)
        self.convg2l = conv(in_global, out_local)
        self.convg2g = SpectralTransform(in_global, out_global) if in_global and out_global else None
        self.out_local, self.out_global = out_local, out_global

    def forward(self, x: Pair) -> Pair:
        local, glob = x
        out_local = out_global = None
        if self.out_local:
            out_local = _sum(_apply(self.convl2l, local), _apply(self.convg2l, glob))
        if self.out_global:
            out_global = _sum(_apply(self.convl2g, local), _apply(self.convg2g, glob))
        assert out_local is not None
        return out_local, out_global


def _apply(module: nn.Module | None, x: torch.Tensor | None) -> torch.Tensor | None:
    return None if module is None or x is None else module(x)


def _sum(a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor | None:
    if a is None:
        return b
    return a if b is None else a + b


class FFCBlock(nn.Module):
    """An FFC, then batch norm and ReLU on each channel group it puts out."""

    def __init__(self, ffc: FFC) -> None:
        super().__init__()
        self.ffc = ffc
        self.bn_l = nn.BatchNorm2d(ffc.out_local) if ffc.out_local else None
        self.bn_g = nn.BatchNorm2d(ffc.out_global) if ffc.out_global else None

    def forward(self, x: Pair | torch.Tensor) -> Pair:
        local, glob = self.ffc((x, None) if isinstance(x, torch.Tensor) else x)
        local = torch.relu(self.bn_l(local)) if self.bn_l is not None else local
        if glob is not None and self.bn_g is not None:
            glob = torch.relu(self.bn_g(glob))
        return local, glob


class FFCResnetBlock(nn.Module):
    def __init__(self, channels: int, ratio: float) -> None:
        super().__init__()
        self.conv1 = FFCBlock(FFC(channels, channels, 3, ratio, ratio, padding=1))
        self.conv2 = FFCBlock(FFC(channels, channels, 3, ratio, ratio, padding=1))

    def forward(self, x: Pair) -> Pair:
        local, glob = self.conv2(self.conv1(x))
        assert glob is not None and x[1] is not None
        return x[0] + local, x[1] + glob


class _Join(nn.Module):
    """The pair back into one tensor: local channels, then global ones."""

    def forward(self, x: Pair) -> torch.Tensor:
        local, glob = x
        return local if glob is None else torch.cat((local, glob), dim=1)


class LamaGenerator(nn.Module):
    """Big LaMa's generator: RGB with the masked part blanked, plus the mask → RGB in [0, 1]."""

    def __init__(self, channels: int = 64, blocks: int = 18, downsamplings: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.ReflectionPad2d(3), FFCBlock(FFC(4, channels, 7, 0, 0))]
        for index in range(downsamplings):
            ratio_out = GLOBAL_RATIO if index == downsamplings - 1 else 0
            cin, cout = channels * 2**index, channels * 2 ** (index + 1)
            layers.append(FFCBlock(FFC(cin, cout, 3, 0, ratio_out, stride=2, padding=1)))
        width = channels * 2**downsamplings
        layers += [FFCResnetBlock(width, GLOBAL_RATIO) for _ in range(blocks)]
        layers.append(_Join())
        for index in range(downsamplings):
            cin = width // 2**index
            layers += [
                nn.ConvTranspose2d(cin, cin // 2, 3, stride=2, padding=1, output_padding=1),
                nn.BatchNorm2d(cin // 2),
                nn.ReLU(),
            ]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(channels, 3, 7), nn.Sigmoid()]
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        result: torch.Tensor = self.model(x)
        return result


def load_lama(path: Path) -> LamaGenerator:
    """The generator with the weights of ``path`` (``ControlNetLama.pth``, or a LaMa training checkpoint's
    ``generator.``-prefixed state); ``ValueError`` when the file is not this network."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{path.name} holds no state dict")
    if any(key.startswith("generator.") for key in state):
        state = {
            key[len("generator.") :]: value for key, value in state.items() if key.startswith("generator.")
        }
    model = LamaGenerator()
    try:
        missing, _unused = model.load_state_dict(state, strict=False)  # a training file's extras: unused
    except RuntimeError as exc:  # a weight of another shape
        raise ValueError(
            f"{path.name} is not Big LaMa's generator: {str(exc).splitlines()[-1].strip()}"
        ) from exc
    if missing:
        raise ValueError(
            f"{path.name} is not Big LaMa's generator: {len(missing)} of its weights are missing "
            f"(e.g. {missing[0]})"
        )
    return model.eval().requires_grad_(False)


def _pad64(size: int) -> int:
    return -size % 64


@torch.no_grad()
def lama_fill(model: LamaGenerator, image: Image.Image, mask: Image.Image) -> Image.Image:
    """``image`` with the white part of ``mask`` filled by LaMa (elsewhere unchanged, pixel for pixel)."""
    import cv2

    rgb = np.asarray(image.convert("RGB"), dtype=np.uint8)
    alpha = np.asarray(mask.convert("L").resize(image.size), dtype=np.uint8)
    height, width = alpha.shape
    scale = WORK_SIZE / min(height, width)
    work_h, work_w = round(height * scale), round(width * scale)
    rgba = np.concatenate([rgb, alpha[:, :, None]], axis=2)
    interpolation = cv2.INTER_CUBIC if scale > 1 else cv2.INTER_AREA
    small = cv2.resize(rgba, (work_w, work_h), interpolation=interpolation)
    small = np.pad(small, [[0, _pad64(work_h)], [0, _pad64(work_w)], [0, 0]], mode="edge")

    parameter = next(model.parameters())
    tensor = torch.from_numpy(small).to(parameter.device, torch.float32).permute(2, 0, 1)[None] / 255.0
    color, hole = tensor[:, :3], (tensor[:, 3:] > 0.5).float()
    color = color * (1 - hole)
    out = model(torch.cat([color, hole], dim=1).to(parameter.dtype)).float()
    out = out * hole + color * (1 - hole)
    filled = (out[0].permute(1, 2, 0).cpu().numpy() * 255.0).clip(0, 255).astype(np.uint8)
    filled = cv2.resize(filled[:work_h, :work_w], (width, height))

    weight = alpha.astype(np.float32)[:, :, None] / 255.0
    blended = filled.astype(np.float32) * weight + rgb.astype(np.float32) * (1 - weight)
    return Image.fromarray(blended.clip(0, 255).astype(np.uint8), "RGB")
