"""Streamed-shard benchmarks (not tests): start-up and memory of `cnet train` against dataset size, reader
throughput against the local-folder reader, and annotate throughput into WebDataset shards.

    python benchmarks/shards.py gen 100000 /tmp/cnet-shards-100k       # N pairs of 64 px images, 1000 a shard
    python benchmarks/shards.py train /tmp/cnet-shards-100k            # --max-steps 20: first step (s), peak RSS
    python benchmarks/shards.py read /tmp/cnet-shards-100k             # samples/s: shards vs a local folder
    python benchmarks/shards.py cache /tmp/cnet-shards-10000/00000.tar   # --cache-latents: off, build, reuse
    python benchmarks/shards.py annotate 400                            # canny -> shards: 1, 2 processes, Ray

Results: RESULTS_shards.md. Every number is one run on the machine named there.
"""

from __future__ import annotations

import io
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

T0 = time.perf_counter()  # the process start, as near as Python lets us
ROOT = Path(__file__).resolve().parent.parent
SHARD = 1000
VARIANTS = 64  # distinct encoded pairs, cycled (the reader decodes every sample all the same)


def _pairs(size: int = 64) -> list[tuple[bytes, bytes]]:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    out = []
    for i in range(VARIANTS):
        hint = np.zeros((size, size, 3), np.uint8)
        hint[8 + i % 20:size - 8, 10:size - 10 - i % 15] = 255
        img = (rng.random((size, size, 3)) * 80).astype(np.uint8) + hint // 2
        b1, b2 = io.BytesIO(), io.BytesIO()
        Image.fromarray(img).save(b1, "JPEG", quality=90)
        Image.fromarray(hint).save(b2, "PNG")
        out.append((b1.getvalue(), b2.getvalue()))
    return out


def gen(n: int, out: str) -> None:
    sys.path.insert(0, str(ROOT))
    from cnetcli.data.shard_write import ShardWriter, is_finished, write_manifest

    pairs = _pairs()
    t = time.perf_counter()
    for s in range(-(-n // SHARD)):
        if is_finished(out, s):
            continue
        with ShardWriter(out, s) as w:
            for k in range(s * SHARD, min(n, (s + 1) * SHARD)):
                img, hint = pairs[k % VARIANTS]
                w.add(f"{k:09d}", {"jpg": img, "conditioning_image.png": hint,
                                   "txt": ["red circle", "blue circle"][k % 2].encode()})
    write_manifest(out)
    print(json.dumps({"pairs": n, "seconds": round(time.perf_counter() - t, 1)}))


def _tiny_base() -> str:
    sys.path.insert(0, str(ROOT))
    d = Path("/tmp/cnet-bench-sd8")
    if not (d / "model_index.json").is_file():
        from cnetcli.models.tiny import save_sd_folder, tiny_sd_components

        save_sd_folder(tiny_sd_components(seed=0, vae_channels=(8, 16, 16, 16), words=("red", "blue", "circle")), d)
    return str(d)


def train_one(data: str, cache: str = "off", out: str = "", steps: str = "20") -> None:
    """In a fresh process: `train` for `steps` steps (`cache` on: --cache-latents into `out`); prints seconds to
    the first step, steps/s after it, peak RSS (MiB) and the cache's bytes per sample."""
    sys.path.insert(0, str(ROOT))
    import torch

    torch.set_num_threads(1)
    from cnetcli.training import TrainConfig, train

    times: list[float] = []

    def on_step(info):
        times.append(time.perf_counter())
        return False

    out = out or f"/tmp/cnet-bench-train-{os.getpid()}"
    cfg = TrainConfig(base=_tiny_base(), data=data, output=out, resolution=32, batch_size=4, max_steps=int(steps),
                      checkpoint_every=0, report_to="none", overwrite=True, cache_latents=cache == "on")
    res = train(cfg, on_step=on_step)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    row = {"data": data, "first_step_s": round(times[0] - T0, 1), "total_s": round(time.perf_counter() - T0, 1),
           "steps_per_s": round((len(times) - 1) / (times[-1] - times[0]), 2), "peak_rss_mib": round(rss),
           "steps": res.steps}
    if res.cache_path is not None:
        from safetensors import safe_open

        files = list(Path(res.cache_path).glob("*.safetensors"))
        cached = 0
        for f in files:
            with safe_open(str(f), "np") as st:
                cached += st.get_slice("offsets").get_shape()[0]
        row |= {"cache_reused": res.cache_reused, "cache_bytes_per_sample": round(
            sum(f.stat().st_size for f in files) / max(cached, 1))}
    print(json.dumps(row))


def train_bench(data: str, *args: str) -> None:
    r = subprocess.run([sys.executable, __file__, "train-one", data, *args], capture_output=True, text=True,
                       env=os.environ | {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    print(r.stdout.strip().splitlines()[-1] if r.returncode == 0 else r.stderr[-2000:])


def cache_bench(data: str) -> None:
    """--cache-latents on streamed shards: a run without it, the run that encodes the cache (before its first
    step), and a later run that reuses it (300 steps of batch 4: over one epoch of a 1000-pair shard)."""
    out = f"/tmp/cnet-bench-cache-{os.getpid()}"
    for cache in ("off", "on", "on"):
        train_bench(data, cache, out, "300")


def read_bench(data: str, n: int = 2000) -> None:
    """Samples/s of the shard stream and of the local-folder reader (PairDataset) on the same pairs."""
    sys.path.insert(0, str(ROOT))
    import torch

    torch.set_num_threads(1)
    from cnetcli.training import TrainConfig
    from cnetcli.training.stream import FRESH, ShardStream, open_shards

    cfg = TrainConfig(data=data, resolution=32, batch_size=50)
    shards, _, reader = open_shards(cfg)
    it = ShardStream(reader, len(shards), cfg, rank=0, world=1, start_batch=0, positions={}).batches(0, FRESH)
    t = time.perf_counter()
    for _ in range(n // 50):
        next(it)
    shard_rate = n / (time.perf_counter() - t)

    folder = Path("/tmp/cnet-bench-folder")
    if not (folder / "metadata.jsonl").is_file():
        _local_folder(folder, n)
    from cnetcli.training.data import BatchStream, PairDataset, collate, read_dataset

    index = read_dataset(str(folder))
    ds = PairDataset(index, 32)
    stream = BatchStream(len(index), 50, seed=0, empty_prompt_prob=0.5, hflip=False)
    t = time.perf_counter()
    for b in range(n // 50):
        collate([ds[item] for item in stream.batch(b)])
    local_rate = n / (time.perf_counter() - t)
    print(json.dumps({"samples": n, "shards_per_s": round(shard_rate), "local_folder_per_s": round(local_rate)}))


def _local_folder(folder: Path, n: int) -> None:
    pairs = _pairs()
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "conditioning_images").mkdir(exist_ok=True)
    rows = []
    for k in range(n):
        img, hint = pairs[k % VARIANTS]
        (folder / "images" / f"{k}.jpg").write_bytes(img)
        (folder / "conditioning_images" / f"{k}.png").write_bytes(hint)
        rows.append(json.dumps({"file_name": f"images/{k}.jpg", "conditioning_image_file_name":
                                f"conditioning_images/{k}.png", "text": "red circle"}))
    (folder / "metadata.jsonl").write_text("\n".join(rows) + "\n")


def annotate_bench(n: int) -> None:
    """canny -> webdataset shards of 100: one process, two processes (RANK/WORLD_SIZE) at once, and Ray with
    two actors (its start-up included)."""
    import shutil

    imgs = Path("/tmp/cnet-bench-imgs")
    if len(list(imgs.glob("*.jpg"))) < n:
        imgs.mkdir(parents=True, exist_ok=True)
        pairs = _pairs(256)
        for k in range(n):
            (imgs / f"{k:06d}.jpg").write_bytes(pairs[k % VARIANTS][0])
    cmd = [sys.executable, "-m", "cnetcli", "annotate", "-t", "canny", str(imgs), "--dataset-format", "webdataset",
           "--shard-size", "100", "-j", "1", "-q", "--dataset"]
    env = os.environ | {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    rates = {}
    for procs in (1, 2):
        out = f"/tmp/cnet-bench-ann-{procs}"
        shutil.rmtree(out, ignore_errors=True)
        t = time.perf_counter()
        ps = [subprocess.Popen([*cmd, out], env=env | {"RANK": str(r), "WORLD_SIZE": str(procs)},
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for r in range(procs)]
        assert all(p.wait() == 0 for p in ps)
        rates[f"{procs}_process_img_per_s"] = round(n / (time.perf_counter() - t), 1)
    out = "/tmp/cnet-bench-ann-ray"
    shutil.rmtree(out, ignore_errors=True)
    t = time.perf_counter()
    r = subprocess.run([*cmd[:-4], "-j", "2", "-q", "--engine", "ray", "--dataset", out], env=env, capture_output=True)
    if r.returncode == 0:  # ray start-up included
        rates["ray_2_actors_img_per_s"] = round(n / (time.perf_counter() - t), 1)
    print(json.dumps({"images": n} | rates))


if __name__ == "__main__":
    cmd, *args = sys.argv[1:]
    {"gen": lambda: gen(int(args[0]), args[1]), "train": lambda: train_bench(args[0]),
     "train-one": lambda: train_one(*args), "read": lambda: read_bench(args[0]),
     "cache": lambda: cache_bench(args[0]),
     "annotate": lambda: annotate_bench(int(args[0]))}[cmd]()
