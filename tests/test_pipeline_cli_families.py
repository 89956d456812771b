"""Issue #12's "done when": annotate -> train -> generate -> eval with the same four commands whatever the
base's family. The commands below differ only in `--base` (a tiny SD folder or a tiny SDXL folder); the family
is detected from the model, never given as a flag."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cnetcli.images import save_png

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _photos(d):
    """Six 64 px 'photos': a filled disc of a different place and size on a plain background."""
    yy, xx = np.mgrid[:64, :64]
    for i in range(6):
        img = np.full((64, 64, 3), (30, 60, 200), np.uint8)
        img[(yy - 20 - 4 * i) ** 2 + (xx - 40 + 3 * i) ** 2 < (8 + 2 * i) ** 2] = (220, 40, 40)
        save_png(d / f"photo{i}.png", img)
    return d


@pytest.mark.parametrize("family", ["sd", "sdxl"])
def test_annotate_train_generate_eval_same_commands(run_cli, tiny_sd_dir, xl, family, tmp_path):
    base = str(xl if family == "sdxl" else tiny_sd_dir)
    photos, ds, run, gen = _photos(tmp_path / "photos"), tmp_path / "ds", tmp_path / "run", tmp_path / "gen"

    code, _, err = run_cli("annotate", str(photos), "--type", "canny", "--dataset", str(ds), "--caption",
                           "red circle", "--image-resolution", "64", "-q")
    assert code == 0, err
    rows = [json.loads(x) for x in (ds / "metadata.jsonl").read_text().splitlines()]
    assert len(rows) == 6

    code, _, err = run_cli("train", "--base", base, "--data", str(ds), "--output", str(run), "--resolution", "64",
                           "--batch-size", "2", "--max-steps", "2", "--learning-rate", "1e-3", "--device", "cpu")
    assert code == 0, err
    net = json.loads((run / "controlnet" / "config.json").read_text())
    assert net["addition_embed_type"] == ("text_time" if family == "sdxl" else None)  # initialised from that UNet

    hint = sorted((ds / "conditioning_images").iterdir())[0]
    code, out, err = run_cli("generate", "--base", base, "--controlnet", str(run / "controlnet"), "--hint",
                             str(hint), "--type", "canny", "--steps", "2", "--seed", "1", "--prompt", "red circle",
                             "--output", str(gen), "--device", "cpu")
    assert code == 0, err
    png = gen / f"{hint.stem}-1.png"
    assert png.exists(), out
    assert json.loads(png.with_suffix(".json").read_text())["family"] == family

    code, _, err = run_cli("eval", str(gen))
    assert code == 0, err
    res = json.loads((gen / "eval.json").read_text())
    assert res["n"] == 1 and res["skipped"] == {} and 0.0 <= res["f1"] <= 1.0
