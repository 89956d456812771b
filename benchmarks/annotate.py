"""Benchmark: `cnet annotate --type canny` vs a per-image loop over controlnet_aux's CannyDetector.

Both run as a user runs them: a fresh subprocess each (interpreter start and imports included), reading
the same JPEG photos and writing one PNG hint per photo. The photos (default 240 at 512 px) are made from
scikit-image's bundled photographs with random crops, flips and colour jitter. The two are run back to
back, alternating, `--repeats` times; the table shows the median. The hints are compared pixel by pixel.

    python benchmarks/annotate.py            # default: 240 photos, 2 repeats
    python benchmarks/annotate.py -n 400 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

BASELINE = textwrap.dedent('''
    import sys
    from pathlib import Path
    from PIL import Image
    from controlnet_aux.canny import CannyDetector   # what users write (imports controlnet_aux and torch)

    src, dst, level = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    dst.mkdir(parents=True, exist_ok=True)
    canny = CannyDetector()
    for p in sorted(src.glob("*.jpg")):
        img = Image.open(p).convert("RGB")
        hint = canny(img, low_threshold=100, high_threshold=200, detect_resolution=512, image_resolution=512)
        kw = {} if level == "default" else {"compress_level": int(level)}
        hint.save(dst / (p.stem + ".png"), **kw)
''')


def make_photos(d: Path, n: int, size: int, seed: int = 0) -> None:
    import numpy as np
    import skimage.data
    from PIL import Image

    rng = np.random.default_rng(seed)
    bases = [f() for f in (skimage.data.astronaut, skimage.data.coffee, skimage.data.chelsea,
                           skimage.data.rocket, skimage.data.camera)]
    bases = [np.stack([b] * 3, axis=2) if b.ndim == 2 else b[:, :, :3] for b in bases]
    for i in range(n):
        b = bases[i % len(bases)]
        h, w = b.shape[:2]
        ch, cw = int(h * rng.uniform(0.6, 1.0)), int(w * rng.uniform(0.6, 1.0))
        y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        crop = b[y: y + ch, x: x + cw].astype(np.float32)
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        crop = crop * rng.uniform(0.8, 1.2, size=3) + rng.uniform(-20, 20)
        im = Image.fromarray(crop.clip(0, 255).astype(np.uint8))
        k = size / min(im.size)
        im = im.resize((max(size, round(im.width * k)), max(size, round(im.height * k))), Image.BICUBIC)
        im.save(d / f"photo{i:04d}.jpg", quality=90)


def timed(cmd: list[str], env: dict[str, str]) -> float:
    t = time.perf_counter()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    dt = time.perf_counter() - t
    if r.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{r.stderr[-3000:]}")
    return dt


def compare(a: Path, b: Path) -> tuple[int, int]:
    import numpy as np
    from PIL import Image

    same = total = 0
    for p in sorted(a.glob("*.png")):
        total += 1
        same += np.array_equal(np.asarray(Image.open(p).convert("RGB")),
                               np.asarray(Image.open(b / p.name).convert("RGB")))
    return same, total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", "--num", type=int, default=240, help="number of photos (default 240)")
    ap.add_argument("--size", type=int, default=512, help="photo short side in px (default 512)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--workers", type=int, default=0, help="cnet --workers (0: all cores)")
    args = ap.parse_args()

    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               HF_HUB_OFFLINE="1")
    with tempfile.TemporaryDirectory(prefix="cnet-bench-") as tmp:
        tmp = Path(tmp)
        (tmp / "in").mkdir()
        make_photos(tmp / "in", args.num, args.size)
        script = tmp / "baseline.py"
        script.write_text(BASELINE)
        runs: dict[str, list[float]] = {"cnet": [], "loop": [], "loop-c1": []}
        for r in range(args.repeats):
            for name in runs:
                out = tmp / f"{name}-{r}"
                if name == "cnet":
                    cmd = [sys.executable, "-m", "cnetcli", "annotate", "--type", "canny", str(tmp / "in"), "-o",
                           str(out), "-q", "--workers", str(args.workers)]
                else:
                    cmd = [sys.executable, str(script), str(tmp / "in"), str(out),
                           "default" if name == "loop" else "1"]
                runs[name].append(timed(cmd, env))
        same, total = compare(tmp / "cnet-0", tmp / "loop-0")

    n = args.num
    med = {k: statistics.median(v) for k, v in runs.items()}
    label = {"cnet": "cnet annotate --type canny (subprocess)",
             "loop": "controlnet_aux CannyDetector loop, PIL default PNG",
             "loop-c1": "controlnet_aux CannyDetector loop, PNG compress_level=1"}
    print(f"\n{n} photos, short side {args.size}px, {os.cpu_count()} CPU cores, median of {args.repeats}")
    print(f"{'run':<58} {'seconds':>8} {'images/s':>9} {'cnet speed-up':>14}")
    for k in runs:
        print(f"{label[k]:<58} {med[k]:>8.2f} {n / med[k]:>9.1f} {med[k] / med['cnet']:>13.2f}x")
    print(f"identical hints: {same}/{total}")


if __name__ == "__main__":
    main()
