"""Write the demo's prediction inputs: Fashion-MNIST test images as PNG files named with their true label,
and scikit-image's colour photos in a folder marked out-of-domain (a clothing classifier has no right
answer for them).

    python examples/demo_images.py OUT [--count 12]
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from PIL import Image
from skimage import data

from mobilecnn.data import FASHION_MNIST_CLASSES, read_fashion_mnist


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--count", type=int, default=12, help="Fashion-MNIST test images to write")
    args = parser.parse_args()
    images, labels = read_fashion_mnist("val")
    fashion = args.out / "fashion-mnist-test"
    fashion.mkdir(parents=True, exist_ok=True)
    step = max(1, len(labels) // args.count)  # spread over the test set: every class shows up
    for index in range(0, step * args.count, step):
        label = re.sub(r"[^A-Za-z0-9]+", "-", FASHION_MNIST_CLASSES[int(labels[index])])
        Image.fromarray(images[index, 0].numpy(), "L").save(fashion / f"{index:05d}_true-{label}.png")
    photos = args.out / "out-of-domain-photos"
    photos.mkdir(parents=True, exist_ok=True)
    for name in ("astronaut", "chelsea"):
        Image.fromarray(getattr(data, name)()).save(photos / f"{name}.jpg", quality=92)
    print(args.out)


if __name__ == "__main__":
    main()
