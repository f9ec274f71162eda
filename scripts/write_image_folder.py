"""Write an embedded dataset as an image folder, the layout your own images take (README, "Your own
images"), so that the worked example runs anywhere without anyone's private data.

    python scripts/write_image_folder.py OUT [--sites 3] [--dataset digits-embedded]

writes ``OUT/<site>/<class>/<n>.png`` (``--sites 0``: ``OUT/<class>/<n>.png``), the dataset's train
and test splits together (the folder dataset makes its own split). Each image goes to a site by a
seeded draw with unequal site sizes (one site about half of the images), as hospitals differ in
size; the class names are the digits' (``0`` ... ``9``). Refuses an OUT that exists and is not empty.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", help="the folder to write (must not exist, or be empty)")
    p.add_argument("--sites", type=int, default=3, help="site folders (0: no site level); default 3")
    p.add_argument("--dataset", default="digits-embedded", help="an embedded dataset (default digits-embedded)")
    p.add_argument("--seed", type=int, default=0, help="the draw of sites (default 0)")
    args = p.parse_args(argv)
    from PIL import Image

    from benchmark.data import DatasetError, load_dataset

    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        print(f"write_image_folder: error: {out} exists and is not an empty folder", file=sys.stderr)
        return 2
    if args.sites < 0:
        print(f"write_image_folder: error: --sites must be >= 0, got {args.sites}", file=sys.stderr)
        return 2
    try:
        parts = [load_dataset(args.dataset, split=s) for s in ("train", "test")]
    except DatasetError as e:
        print(f"write_image_folder: error: {e}", file=sys.stderr)
        return 2
    images = np.concatenate([d.images for d in parts])
    labels = np.concatenate([d.labels for d in parts])
    rng = np.random.default_rng(args.seed)
    weights = np.arange(args.sites, 0, -1, dtype=np.float64) ** 2 if args.sites else None
    sites = rng.choice(args.sites, size=len(labels), p=weights / weights.sum()) if args.sites else None
    # Names that sort as they count (a folder dataset's labels are its sorted class names).
    width = len(str(parts[0].num_classes - 1))
    site_name = (lambda k: f"site-{chr(ord('a') + k)}") if args.sites <= 26 else (lambda k: f"site-{k:03d}")
    for i, (img, label) in enumerate(zip(images, labels)):
        folder = out / (site_name(int(sites[i])) if args.sites else "") / f"{int(label):0{width}d}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0)).save(folder / f"{i:05d}.png")
    where = f"{args.sites} site(s)" if args.sites else "no sites"
    print(f"wrote {len(labels)} images of {args.dataset} to {out} ({where}, {parts[0].num_classes} classes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
