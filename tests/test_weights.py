"""The weights manager and `cnet weights`: resolution, hashes, manifest verification, offline errors."""

from __future__ import annotations

import json

import pytest

from cnetcli.errors import MissingWeightsError
from cnetcli.models import weights as W


def test_resolve_local_and_missing(tmp_path, monkeypatch):
    monkeypatch.delenv("CNET_WEIGHTS_DIR", raising=False)
    with pytest.raises(MissingWeightsError, match=r"mlsd_large_512_fp32.pth \(from hub repo lllyasviel/Annotators\)"):
        W.resolve("mlsd_large_512_fp32.pth", tmp_path, offline=True, for_type="mlsd")
    (tmp_path / "mlsd_large_512_fp32.pth").write_bytes(b"x")
    assert W.resolve("mlsd_large_512_fp32.pth", tmp_path, offline=True) == tmp_path / "mlsd_large_512_fp32.pth"
    monkeypatch.setenv("CNET_WEIGHTS_DIR", str(tmp_path))  # the env var is the default folder
    assert W.resolve("mlsd_large_512_fp32.pth", offline=True) == tmp_path / "mlsd_large_512_fp32.pth"


def test_cli_list_verify_and_offline_pull(tmp_path, run_cli):
    import hashlib

    f = tmp_path / "ControlNetHED.pth"
    f.write_bytes(b"hed-weights")
    code, out, err = run_cli("weights", "list", "softedge", "mlsd", "--weights-dir", str(tmp_path), "--json")
    assert code == 0, err
    rows = {(r["type"], r["file"]): r for r in json.loads(out)}
    hed = rows[("softedge", "ControlNetHED.pth")]
    assert hed["present"] and hed["size"] == 11 and hed["sha256"] == hashlib.sha256(b"hed-weights").hexdigest()
    assert not rows[("mlsd", "mlsd_large_512_fp32.pth")]["present"]
    code, out, err = run_cli("weights", "list", "--weights-dir", str(tmp_path))
    assert code == 0 and "missing" in out and "cnet weights pull" in out

    W.record_hashes(tmp_path)
    assert json.loads((tmp_path / W.MANIFEST_NAME).read_text())["ControlNetHED.pth"] == hed["sha256"]
    code, out, err = run_cli("weights", "verify", "softedge", "--weights-dir", str(tmp_path))
    assert code == 0 and "ok" in out
    f.write_bytes(b"tampered!!!")
    code, out, err = run_cli("weights", "verify", "softedge", "--weights-dir", str(tmp_path))
    assert code == 1 and "sha256 mismatch" in err and "ControlNetHED.pth" in err

    code, out, err = run_cli("weights", "pull", "mlsd", "--weights-dir", str(tmp_path), "--offline")
    assert code == 1 and "offline" in err and "mlsd_large_512_fp32.pth" in err and "Traceback" not in err
    code, out, err = run_cli("weights", "list", "nosuchtype")
    assert code == 2 and "model-backed types" in err


def test_annotate_missing_weight_through_cli_list(tmp_path, run_cli, monkeypatch):
    monkeypatch.setenv("CNET_WEIGHTS_DIR", str(tmp_path))
    code, out, err = run_cli("weights", "list", "pose", "--json", "--no-hash")
    rows = json.loads(out)
    assert code == 0 and [r["present"] for r in rows] == [False, False, False]


def test_caption_dataset_with_tiny_blip(tmp_path):
    import numpy as np

    from cnetcli.images import save_png
    from cnetcli.models.captions import caption_dataset
    from cnetcli.models.tiny import tiny_blip

    model, processor = tiny_blip(words=("red", "circle"), image_size=32)
    model.save_pretrained(tmp_path / "blip")
    processor.save_pretrained(tmp_path / "blip")
    ds = tmp_path / "ds"
    rows = []
    for i in range(3):
        save_png(ds / "images" / f"{i}.png", np.full((32, 32, 3), 60 * i, np.uint8))
        save_png(ds / "conditioning_images" / f"{i}.png", np.zeros((32, 32, 3), np.uint8))
        rows.append({"file_name": f"images/{i}.png", "conditioning_image_file_name": f"conditioning_images/{i}.png",
                     "text": "" if i < 2 else "keep me"})
    (ds / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    n = caption_dataset(ds, str(tmp_path / "blip"), batch_size=2, max_new_tokens=5, num_beams=1)
    got = [json.loads(line) for line in (ds / "metadata.jsonl").read_text().splitlines()]
    assert n == 2 and got[2]["text"] == "keep me"
    assert all(isinstance(r["text"], str) and r["text"] for r in got[:2])
    assert got[0]["conditioning_image_file_name"] == "conditioning_images/0.png"
