"""Write the real colour photos that scikit-image ships (astronaut, coffee, chelsea, rocket) as JPEG/PNG files."""

import sys
from pathlib import Path

from PIL import Image
from skimage import data

out = Path(sys.argv[1] if len(sys.argv) > 1 else "photos")
out.mkdir(parents=True, exist_ok=True)
for name in ("astronaut", "coffee", "chelsea", "rocket"):
    Image.fromarray(getattr(data, name)()).save(out / f"{name}.jpg", quality=92)
print(out)
