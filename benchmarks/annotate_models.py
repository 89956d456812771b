"""images/s for `depth` and `pose`: cnet (batched, models loaded once) vs a per-image controlnet_aux loop.

Same images, same device, same real-size networks (random weights saved in the real file formats to a temp
folder, since this machine may have no hub access; speed does not depend on the weight values).
Usage: python benchmarks/annotate_models.py [--n 8] [--size 512] [--device auto] [--batch 8]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--batch", type=int, default=8)
    a = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import numpy as np
    import torch
    from test_model_annotators import random_state_dict

    import cnetcli.annotators as A
    from cnetcli.annotators._aux import aux_module, resolve_device

    dev = resolve_device(a.device)
    d = Path(tempfile.mkdtemp(prefix="cnet-bench-w-"))
    m = aux_module("open_pose.model")
    body = random_state_dict(m.bodypose_model, 1)
    torch.save({".".join(k.split(".")[1:]): v for k, v in body.items()}, d / "body_pose_model.pth")
    hand = random_state_dict(m.handpose_model, 2)
    torch.save({".".join(k.split(".")[1:]): v for k, v in hand.items()}, d / "hand_pose_model.pth")
    torch.save(random_state_dict(aux_module("open_pose.face").FaceNet, 3), d / "facenet.pth")
    DPT = aux_module("midas.midas.dpt_depth").DPTDepthModel
    torch.save(random_state_dict(lambda: DPT(path=None, backbone="vitb_rn50_384", non_negative=True), 4),
               d / "dpt_hybrid-midas-501f0c75.pt")
    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 255, (a.size, a.size, 3), dtype=np.uint8) for _ in range(a.n)]

    from controlnet_aux import MidasDetector, OpenposeDetector

    rows = []

    def bench(name, fn):
        fn(imgs[:1])  # warm-up
        if dev.startswith("cuda"):
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn(imgs)
        if dev.startswith("cuda"):
            torch.cuda.synchronize()
        dt = time.perf_counter() - t
        rows.append((name, a.n / dt))
        print(f"{name:40s} {a.n / dt:8.2f} img/s", flush=True)

    def chunks(xs):
        return [xs[i: i + a.batch] for i in range(0, len(xs), a.batch)]

    # depth: detect 384 (ControlNet's default), output 512
    dep = A.build("depth", None, weights_dir=str(d), offline=True, device=dev)
    bench("depth  cnet batched", lambda xs: [h for c in chunks(xs) for h in dep.batch(c, detect_resolution=384,
                                                                                     image_resolution=512)])
    mid = MidasDetector.from_pretrained(str(d)).to(dev)
    bench("depth  controlnet_aux per-image loop", lambda xs: [mid(x, detect_resolution=384, image_resolution=512)
                                                             for x in xs])
    pose = A.build("pose", None, weights_dir=str(d), offline=True, device=dev)
    bench("pose   cnet", lambda xs: [h for c in chunks(xs) for h in pose.batch(c, detect_resolution=512,
                                                                              image_resolution=512)])
    op = OpenposeDetector.from_pretrained(str(d)).to(dev)
    bench("pose   controlnet_aux per-image loop", lambda xs: [op(x, detect_resolution=512, image_resolution=512)
                                                             for x in xs])
    name = torch.cuda.get_device_name(0) if dev.startswith("cuda") else f"CPU ({platform.processor() or 'cpu'}, " \
        f"{torch.get_num_threads()} threads)"
    print(f"device: {name}; n={a.n} images {a.size}x{a.size}, batch {a.batch}")


if __name__ == "__main__":
    main()
