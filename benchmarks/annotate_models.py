"""images/s for `depth` and `pose`: cnet (batched, models loaded once) vs a per-image controlnet_aux loop.

Same images, same device, same real-size networks (random weights saved in the real file formats to a temp
folder, since this machine may have no hub access). cnet runs as `cnet annotate` does: a loader thread prepares
batch k+1 (resize, stack, pinned memory) while batch k runs (`prefetched` + `prepare`/`run_prepared`); pose is
the batched body path (cnetcli/annotators/pose_batch.py). The network speed does not depend on the weight
values, but OpenPose's post-processing does (it scores every pair of peaks): the body network's last layers
are scaled (`--pose-gain`, default 150: ~2 peaks per part on these images, as on a photo of a person or two)
so that its maps cross the peak thresholds as trained weights do, instead of finding nothing.
Usage: python benchmarks/annotate_models.py [--n 8] [--size 512] [--device auto] [--batch 8] [--json out.json]
       [--kinds depth,pose] [--pose-gain 150]
(`--detect 64` shrinks the detection resolution: a smoke run of the same code paths, not a speed figure)
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
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
    ap.add_argument("--detect", type=int, default=None, help="detect resolution (default: 384 depth, 512 pose)")
    ap.add_argument("--json", default=None, help="also write the results to this JSON file")
    ap.add_argument("--kinds", default="depth,pose", help="comma-separated subset of depth,pose")
    ap.add_argument("--pose-gain", type=float, default=150.0, help="scale of the body network's last layers")
    a = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from cnetcli.device import resolve_device

    dev = resolve_device(a.device)
    kinds = set(a.kinds.split(","))
    d = Path(tempfile.mkdtemp(prefix="cnet-bench-w-"))
    try:
        run(a, kinds, d, dev)
    finally:  # the random checkpoints are ~0.6 GB
        shutil.rmtree(d, ignore_errors=True)


def run(a, kinds, d, dev) -> None:
    import numpy as np
    import torch
    from test_model_annotators import random_state_dict

    import cnetcli.annotators as A
    from cnetcli.annotators._aux import aux_module

    dd, dp = a.detect or 384, a.detect or 512
    m = aux_module("open_pose.model")
    body = random_state_dict(m.bodypose_model, 1)
    for k in body:
        if "Mconv7_stage6" in k and k.endswith("weight"):
            body[k] = body[k] * a.pose_gain
    torch.save({".".join(k.split(".")[1:]): v for k, v in body.items()}, d / "body_pose_model.pth")
    hand = random_state_dict(m.handpose_model, 2)
    torch.save({".".join(k.split(".")[1:]): v for k, v in hand.items()}, d / "hand_pose_model.pth")
    torch.save(random_state_dict(aux_module("open_pose.face").FaceNet, 3), d / "facenet.pth")
    if "depth" in kinds:
        DPT = aux_module("midas.midas.dpt_depth").DPTDepthModel
        torch.save(random_state_dict(lambda: DPT(path=None, backbone="vitb_rn50_384", non_negative=True), 4),
                   d / "dpt_hybrid-midas-501f0c75.pt")
    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 255, (a.size, a.size, 3), dtype=np.uint8) for _ in range(a.n)]

    from controlnet_aux import MidasDetector, OpenposeDetector

    rows = []

    def bench(name, fn, warm=1):
        # warm-up: one image for the per-image loop, one full batch for cnet (the first call at a new batch
        # shape pays cuDNN/cuBLAS set-up that a long run amortises)
        fn(imgs[:warm])
        if dev.startswith("cuda"):
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn(imgs)
        if dev.startswith("cuda"):
            torch.cuda.synchronize()
        dt = time.perf_counter() - t
        rows.append((name, a.n / dt))
        print(f"{name:40s} {a.n / dt:8.2f} img/s", flush=True)

    from concurrent.futures import ThreadPoolExecutor

    from cnetcli.annotation.run import prefetched

    def chunks(xs):
        return [xs[i: i + a.batch] for i in range(0, len(xs), a.batch)]

    def pipelined(ann, dr):  # what `cnet annotate` does with decoded images (annotation/run.py _run_model)
        def run(xs):
            with ThreadPoolExecutor(1) as loader:
                return [h for prep in prefetched(lambda c: ann.prepare(c, detect_resolution=dr), chunks(xs), loader)
                        for h in ann.run_prepared(prep, image_resolution=a.size)]
        return run

    if "depth" in kinds:  # detect 384 (ControlNet's default), output --size
        dep = A.build("depth", None, weights_dir=str(d), offline=True, device=dev)
        bench("depth  cnet batched", pipelined(dep, dd), warm=a.batch)
        mid = MidasDetector.from_pretrained(str(d)).to(dev)
        bench("depth  controlnet_aux per-image loop", lambda xs: [mid(x, detect_resolution=dd,
                                                                      image_resolution=a.size) for x in xs])
    if "pose" in kinds:
        pose = A.build("pose", None, weights_dir=str(d), offline=True, device=dev)
        bench("pose   cnet batched", pipelined(pose, dp), warm=a.batch)
        op = OpenposeDetector.from_pretrained(str(d)).to(dev)
        bench("pose   controlnet_aux per-image loop", lambda xs: [op(x, detect_resolution=dp,
                                                                     image_resolution=a.size) for x in xs])
    name = torch.cuda.get_device_name(0) if dev.startswith("cuda") else f"CPU ({platform.processor() or 'cpu'}, " \
        f"{torch.get_num_threads()} threads)"
    print(f"device: {name}; n={a.n} images {a.size}x{a.size}, batch {a.batch}, detect {dd} (depth) / {dp} (pose)")
    if a.json:
        import json

        Path(a.json).write_text(json.dumps({"device": name, "n": a.n, "size": a.size, "batch": a.batch,
                                            "rows": {k.split()[0] + " " + ("cnet" if "cnet" in k else "controlnet_aux"): v
                                                     for k, v in rows}}, indent=2) + "\n")


if __name__ == "__main__":
    main()
