"""THE image definition: how a file becomes pixels, and how pixels become a model input.

Training, evaluation, ``predict`` and the sidecar written beside every exported file all go
through this module, so a model sees in production exactly the pixels it was evaluated on:

* :func:`open_image` decodes any raster file to 8-bit "RGB" or "L": EXIF orientation applied,
  16-bit and 32-bit integer images scaled by 1/257 (the 16-bit range onto 8 bits), float images
  in [0, 1] scaled to 255, palette and alpha images converted with the alpha dropped. Only raster
  decoders are enabled: PIL's EPS/PDF plugins would hand the file to Ghostscript.
* :class:`Preprocessing` is the eval-time transform, stored as data in run configs and sidecars:
  ``resize="square"`` (the small in-memory datasets: bilinear resize of the whole image to R x R,
  antialiased when shrinking) or ``resize="center_crop"`` (image folders: shorter side to
  ``int(R / crop_fraction)``, then the central R x R), then ``(x * scale - mean) / std`` per channel.
  ``channel_order="BGR"`` (imported megvii weights) reverses the decoded RGB channels before that;
  ``mean`` and ``std`` are then given in the model's (BGR) order.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from ..errors import DataError
from ..validators import check_choice, check_int, check_number, is_int, is_number, refuse
from .names import is_folder_dataset

if TYPE_CHECKING:
    from torchvision.transforms import v2

__all__ = [
    "IMAGE_EXTENSIONS",
    "RASTER_FORMATS",
    "MAX_RESOLUTION",
    "Preprocessing",
    "open_image",
    "load_image",
    "resize_square",
    "is_image_name",
    "train_geometry",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")
RASTER_FORMATS = ("PNG", "JPEG", "BMP", "DIB", "GIF", "WEBP", "TIFF", "PPM")  # JPEG covers MPO
#: Largest input side any preprocessing accepts: larger values in a sidecar are a typo or an attack.
MAX_RESOLUTION = 2048
RESIZE_MODES = ("square", "center_crop")
CHANNEL_ORDERS = ("RGB", "BGR")


def is_image_name(name: str) -> bool:
    """Whether a file name has an image extension (case-insensitive) and is not hidden."""
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def open_image(path: str | os.PathLike, channels: int, draft: int | None = None) -> Image.Image:
    """Decode an image file of any mode to PIL "RGB" (``channels=3``) or "L" (``channels=1``).

    ``draft`` lets JPEG decode at a reduced size (statistics only). Raises ``OSError``/``ValueError``
    (from PIL) for unreadable files; the callers turn that into their own message.
    """
    target = "L" if channels == 1 else "RGB"
    with Image.open(path, formats=RASTER_FORMATS) as opened:
        im: Image.Image = opened
        if draft and im.format == "JPEG":
            im.draft(target, (draft, draft))
        im.load()
        try:
            im = ImageOps.exif_transpose(im)
        except Exception:  # noqa: BLE001 - a broken EXIF block should not lose the image
            pass
        if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
            arr = np.asarray(im, dtype=np.float64)
            if im.mode == "F" and arr.size and np.nanmax(arr) <= 1.0:
                arr = arr * 255.0
            elif im.mode != "F" and (im.mode.startswith("I;16") or (arr.size and arr.max() > 255)):
                arr = arr / 257.0  # 16-bit range to 8-bit
            im = Image.fromarray(np.clip(np.rint(np.nan_to_num(arr)), 0, 255).astype(np.uint8), "L")
        elif im.mode in ("P", "PA"):
            im = im.convert("RGBA")
        elif im.mode == "LAB":
            raise ValueError("LAB images are not supported")
        if im.mode not in ("RGB", "L"):
            im = im.convert("RGB")
        return im if im.mode == target else im.convert(target)


def load_image(path: str | os.PathLike, channels: int) -> torch.Tensor:
    """:func:`open_image` as a uint8 tensor (C, H, W)."""
    # torchvision is imported where it is used: importing it costs 1.5 s (it loads torch._dynamo), paid by every
    # command that imports this module otherwise
    from torchvision.transforms import v2

    return v2.functional.pil_to_tensor(open_image(path, channels))


def resize_square(images: torch.Tensor, resolution: int) -> torch.Tensor:
    """Bilinear resize of uint8 ``(N, C, H, W)`` or ``(C, H, W)`` to R x R, antialiased when shrinking."""
    single = images.dim() == 3
    batch = images[None] if single else images
    if batch.shape[-1] == resolution and batch.shape[-2] == resolution:
        return images
    antialias = resolution < max(batch.shape[-2:])
    per_image = batch.shape[1] * max(resolution, batch.shape[-1]) * max(resolution, batch.shape[-2]) * 4
    chunk = max(1, (256 << 20) // per_image)  # ~256 MiB of float32 at a time
    out = torch.empty(batch.shape[0], batch.shape[1], resolution, resolution, dtype=torch.uint8)
    for lo in range(0, batch.shape[0], chunk):
        x = batch[lo:lo + chunk].to(torch.float32)
        y = F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False, antialias=antialias)
        out[lo:lo + chunk] = y.round_().clamp_(0, 255).to(torch.uint8)
    return out[0] if single else out


def _floats(name: str, values: Any, channels: int) -> tuple[float, ...]:
    if is_number(values):
        values = [values]
    if not isinstance(values, (list, tuple)) or not values or not all(is_number(v) for v in values):
        raise refuse(f"preprocessing {name}", values, "a list of finite numbers", DataError)
    vals = tuple(float(v) for v in values)
    if len(vals) == 1 and channels > 1:
        vals = vals * channels
    if len(vals) != channels:
        raise DataError(f"preprocessing {name} has {len(vals)} values for {channels} channel(s)")
    return vals


@dataclass(frozen=True)
class Preprocessing:
    """The eval-time transform of one model, as data (see the module docstring)."""

    resolution: int
    in_chans: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    resize: str = "square"
    crop_fraction: float = 0.875
    scale: float = 1.0 / 255.0
    channel_order: str = "RGB"

    def __post_init__(self) -> None:
        check_int(self.resolution, "preprocessing resolution", minimum=1, maximum=MAX_RESOLUTION, error=DataError)
        if not is_int(self.in_chans) or self.in_chans not in (1, 3):
            raise refuse("preprocessing in_chans", self.in_chans, "1 (grayscale) or 3 (RGB)", DataError)
        object.__setattr__(self, "mean", _floats("mean", self.mean, self.in_chans))
        object.__setattr__(self, "std", _floats("std", self.std, self.in_chans))
        if any(s <= 0 for s in self.std):
            raise refuse("preprocessing std", list(self.std), "> 0 for every channel", DataError)
        check_choice(self.resize, "preprocessing resize", RESIZE_MODES, DataError)
        for name, value in (("crop_fraction", self.crop_fraction), ("scale", self.scale)):
            check_number(value, f"preprocessing {name}", above=0, maximum=1, error=DataError)
        check_choice(self.channel_order, "preprocessing channel_order", CHANNEL_ORDERS, DataError)
        if self.channel_order == "BGR" and self.in_chans != 3:
            raise DataError("preprocessing channel_order BGR needs in_chans=3")

    @classmethod
    def from_dict(cls, data: Any, where: str = "preprocessing") -> Preprocessing:
        """Build from a run config's or sidecar's dict, raising :class:`DataError` naming ``where``."""
        if not isinstance(data, dict):
            raise DataError(f"{where}: expected an object with resolution, in_chans, mean and std, got "
                            f"{type(data).__name__}")
        known = {f for f in cls.__dataclass_fields__}
        try:
            return cls(**{k: v for k, v in data.items() if k in known})
        except TypeError as exc:
            raise DataError(f"{where}: {exc}") from None
        except DataError as exc:
            raise DataError(f"{where}: {exc}") from None

    @classmethod
    def for_dataset(cls, info: dict[str, Any], where: str = "dataset description") -> Preprocessing:
        """The preprocessing a model trained on a dataset (a ``DataInfo.to_dict()``) is evaluated with."""
        if not isinstance(info, dict):
            raise DataError(f"{where}: expected an object, got {type(info).__name__}")
        if isinstance(info.get("preprocessing"), dict):
            return cls.from_dict(info["preprocessing"], where)
        resize = "center_crop" if is_folder_dataset(info.get("name", "")) else "square"
        return cls.from_dict({"resolution": info.get("resolution", 224), "in_chans": info.get("in_chans", 3),
                              "mean": info.get("mean", [0.5]), "std": info.get("std", [0.5]), "resize": resize}, where)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @property
    def resize_short_side(self) -> int:
        """``center_crop``: the shorter side before cropping."""
        return int(self.resolution / self.crop_fraction)

    def geometry(self, image: torch.Tensor) -> torch.Tensor:
        """uint8 (C, H, W) of any size -> uint8 (C, R, R)."""
        r = self.resolution
        if self.resize == "square":
            return resize_square(image, r)
        from torchvision.transforms import v2

        image = v2.functional.resize(image, [self.resize_short_side], antialias=True)
        return v2.functional.center_crop(image, [r, r])

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (N, C, R, R) or (C, R, R) -> float32 model input."""
        shape = (-1, 1, 1) if images.dim() == 3 else (1, -1, 1, 1)
        mean = torch.tensor(self.mean, dtype=torch.float32, device=images.device).view(shape)
        std = torch.tensor(self.std, dtype=torch.float32, device=images.device).view(shape)
        if self.channel_order == "BGR":
            images = images.flip(-3)
        return (images.to(torch.float32) * self.scale - mean) / std

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        """uint8 (C, H, W) -> float32 (C, R, R): the model input."""
        return self.normalize(self.geometry(image))

    def load(self, path: str | os.PathLike) -> torch.Tensor:
        """An image file -> float32 (C, R, R) model input."""
        return self(load_image(path, self.in_chans))


def train_geometry(resolution: int, flip: bool = True) -> v2.Compose:
    """Training augmentation of image folders on uint8 (C, H, W): Inception-style random resized crop
    (scale 0.08-1, aspect 3/4-4/3) to R x R and a horizontal flip."""
    from torchvision.transforms import v2

    steps: list[Any] = [v2.RandomResizedCrop(resolution, antialias=True)]
    if flip:
        steps.append(v2.RandomHorizontalFlip())
    return v2.Compose(steps)
