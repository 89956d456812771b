"""The reward's floor on a circles dataset: what ControlNet++'s canny consistency loss (cnet's SoftCanny, MSE)
gives a *perfect* prediction (the training image itself, and its VAE round trip through the base) against the
circle-outline hint, against an all-black prediction, and how far the outline hint and cv2's canny of the image
agree pixel for pixel (a benchmark, not a timed test; results in benchmarks/RESULTS_reward.md).

    PYTHONPATH=$PWD python benchmarks/reward_floor.py /tmp/reward-circles/data/train --count 64
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def main() -> None:
    import cv2
    import numpy as np
    import torch
    from diffusers import AutoencoderKL
    from PIL import Image

    from cnetcli.annotators.differentiable import SoftCanny
    from cnetcli.models.sd import BUILTIN_MODELS

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("data", type=Path, help="a circles dataset folder (metadata.jsonl, images/, conditioning_images/)")
    ap.add_argument("--count", type=int, default=64)
    ap.add_argument("--base", default="cnet-tiny")
    args = ap.parse_args()

    rows = [json.loads(line) for line in (args.data / "metadata.jsonl").read_text().splitlines()][: args.count]
    images = np.stack([np.asarray(Image.open(args.data / r["file_name"]).convert("RGB")) for r in rows])
    hints = np.stack([np.asarray(Image.open(args.data / r["conditioning_image_file_name"]).convert("RGB"))
                      for r in rows])
    canny = np.stack([cv2.Canny(i, 100, 200) for i in images]) > 127
    outline = hints.mean(-1) > 127
    print(f"pixels per image: outline hint {outline.sum((1, 2)).mean():.1f}, cv2 canny of the image "
          f"{canny.sum((1, 2)).mean():.1f}, both {(outline & canny).sum((1, 2)).mean():.1f}")

    sc = SoftCanny()  # the canny type's defaults (100, 200): what --reward canny uses for circle-outline hints
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    target = sc.target(torch.from_numpy(hints).permute(0, 3, 1, 2).float() / 255)
    vae = AutoencoderKL.from_pretrained(Path(BUILTIN_MODELS.get(args.base, args.base)) / "vae").eval()
    with torch.no_grad():
        round_trip = (vae.decode(vae.encode(x * 2 - 1).latent_dist.mean).sample / 2 + 0.5).clamp(0, 1)
        for name, loss in (("the image itself", sc.loss(sc(x), target)),
                           ("its VAE round trip", sc.loss(sc(round_trip), target)),
                           ("all black (no edges)", sc.loss(torch.zeros_like(target), target)),
                           ("the image vs its own cv2 canny",
                            sc.loss(sc(x), torch.from_numpy(canny).float()[:, None]))):
            print(f"reward loss of {name}: {loss.mean():.4f} ± {loss.std():.4f}")


if __name__ == "__main__":
    main()
