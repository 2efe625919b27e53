"""Where each source publishes the ImageNet weights of our models, and the hash it publishes with them.

One entry per (registered model, source). ``sha256`` is what the source publishes: torchvision the first 8 hex
digits of the file's SHA-256, in its file name (``torch.hub``'s ``check_hash``); Keras and timm publish none
for these files (``keras.applications`` calls ``get_file`` without ``file_hash``; the Hugging Face page
lists a hash, but not in the library): for those the hash of the first download is recorded and later
downloads must match it. megvii's ShuffleNet-Series files are on Google Drive / OneDrive behind a page, not on
a direct URL: there is no entry; download them by hand and ``weights import`` them.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["PublishedFile", "PUBLISHED_FILES", "published_file", "published_sources"]


@dataclass(frozen=True)
class PublishedFile:
    model: str
    source: str
    url: str
    sha256: str | None = None  # the published hash or its prefix (hex); None: record the first download's
    variant: str | None = None  # timm's model name, checked on import
    resolution: int | None = None  # the input side the weights were trained at (Keras files name it)

    @property
    def file_name(self) -> str:
        return self.url.rstrip("/").rsplit("/", 1)[-1] if self.source != "timm" else f"{self.variant}.safetensors"


_KERAS = "https://storage.googleapis.com/tensorflow/keras-applications"
_HF = "https://huggingface.co/timm/{tag}/resolve/main/model.safetensors"


def _keras_v2(width: str, alpha: str) -> PublishedFile:
    return PublishedFile(f"mobilenet_v2_x{width}", "keras",
                         f"{_KERAS}/mobilenet_v2/mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{alpha}_224.h5",
                         resolution=224)


def _keras_v1(width: str, alpha: str) -> PublishedFile:
    return PublishedFile(f"mobilenet_v1_x{width}", "keras", f"{_KERAS}/mobilenet/mobilenet_{alpha}_224_tf.h5",
                         resolution=224)


def _timm(model: str, variant: str, tag: str) -> PublishedFile:
    return PublishedFile(model, "timm", _HF.format(tag=tag), variant=variant)


PUBLISHED_FILES: tuple[PublishedFile, ...] = (
    PublishedFile("mobilenet_v2_x1_0", "torchvision", "https://download.pytorch.org/models/mobilenet_v2-b0353104.pth",
                  sha256="b0353104"),
    _timm("mobilenet_v2_x0_5", "mobilenetv2_050", "mobilenetv2_050.lamb_in1k"),
    _timm("mobilenet_v2_x1_0", "mobilenetv2_100", "mobilenetv2_100.ra_in1k"),
    _timm("mobilenet_v2_x1_4", "mobilenetv2_140", "mobilenetv2_140.ra_in1k"),
    _timm("mobilenet_v1_x1_0", "mobilenetv1_100", "mobilenetv1_100.ra4_e3600_r224_in1k"),
    *(_keras_v2(w, a) for w, a in (("0_35", "0.35"), ("0_5", "0.5"), ("0_75", "0.75"), ("1_0", "1.0"),
                                   ("1_3", "1.3"), ("1_4", "1.4"))),
    *(_keras_v1(w, a) for w, a in (("0_25", "2_5"), ("0_5", "5_0"), ("0_75", "7_5"), ("1_0", "1_0"))),
)


def published_sources(model: str) -> list[str]:
    """The sources that publish weights for ``model``."""
    return [f.source for f in PUBLISHED_FILES if f.model == model]


def published_file(model: str, source: str) -> PublishedFile | None:
    return next((f for f in PUBLISHED_FILES if f.model == model and f.source == source), None)
