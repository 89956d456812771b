"""The weights manager and `cnet weights`: resolution, hashes, manifest verification, offline errors."""

from __future__ import annotations

import json

import pytest

from cnetcli.annotators import catalogue
from cnetcli.errors import MissingWeightsError
from cnetcli.models import weights as W

MLSD = W.WeightFile("mlsd_large_512_fp32.pth")


def test_resolve_local_and_missing(tmp_path, monkeypatch):
    monkeypatch.delenv("CNET_WEIGHTS_DIR", raising=False)
    with pytest.raises(MissingWeightsError, match=r"mlsd_large_512_fp32.pth \(from hub repo lllyasviel/Annotators\)"):
        W.resolve(MLSD, tmp_path, offline=True, for_type="mlsd")
    (tmp_path / "mlsd_large_512_fp32.pth").write_bytes(b"x")
    assert W.resolve(MLSD, tmp_path, offline=True) == tmp_path / "mlsd_large_512_fp32.pth"
    monkeypatch.setenv("CNET_WEIGHTS_DIR", str(tmp_path))  # the env var is the default folder
    assert W.resolve(MLSD, offline=True) == tmp_path / "mlsd_large_512_fp32.pth"


def test_cli_list_verify_and_offline_pull(tmp_path, run_cli, monkeypatch):
    import hashlib

    f = tmp_path / "ControlNetHED.pth"
    f.write_bytes(b"\x80\x02hed-weights")  # starts like a (legacy) torch pickle
    code, out, err = run_cli("weights", "list", "softedge", "mlsd", "--weights-dir", str(tmp_path), "--json")
    assert code == 0, err
    rows = {(r["type"], r["file"]): r for r in json.loads(out)}
    hed = rows[("softedge", "ControlNetHED.pth")]
    assert hed["present"] and hed["size"] == 13 and hed["expected_size"] == 29444406 and hed["check"] == "wrong size"
    assert not rows[("mlsd", "mlsd_large_512_fp32.pth")]["present"]
    code, out, err = run_cli("weights", "list", "--weights-dir", str(tmp_path))
    assert code == 0 and "missing" in out and "cnet weights pull" in out

    # a file without published values is checked against the manifest `pull` records
    monkeypatch.delitem(W.KNOWN_FILES, "ControlNetHED.pth")
    monkeypatch.delitem(W.KNOWN_SHA256, "ControlNetHED.pth")
    code, out, err = run_cli("weights", "verify", "softedge", "--weights-dir", str(tmp_path))
    assert code == 0 and "unverified" in out and " ok" not in out, out  # nothing vouches for it: never "ok"
    W.record_hashes(tmp_path, ["ControlNetHED.pth"])
    assert json.loads((tmp_path / W.MANIFEST_NAME).read_text())["ControlNetHED.pth"] == \
        hashlib.sha256(b"\x80\x02hed-weights").hexdigest()
    code, out, err = run_cli("weights", "verify", "softedge", "--weights-dir", str(tmp_path))
    assert code == 0 and "ok" in out
    f.write_bytes(b"\x80\x02tampered!!!")
    code, out, err = run_cli("weights", "verify", "softedge", "--weights-dir", str(tmp_path))
    assert code == 1 and "sha256 mismatch" in err and "ControlNetHED.pth" in err and "cnet weights pull softedge" in err

    code, out, err = run_cli("weights", "pull", "mlsd", "--weights-dir", str(tmp_path), "--offline")
    assert code == 1 and "offline" in err and "mlsd_large_512_fp32.pth" in err and "Traceback" not in err
    code, out, err = run_cli("weights", "list", "nosuchtype")
    assert code == 2 and "model-backed types" in err


def test_known_files_cover_every_annotator_file():
    """Every annotator weight file has its published size and sha256 shipped (the seg model is a transformers
    repo, verified by the HF cache's blob names instead)."""
    names = {f.name for fs in catalogue.type_weights().values() for f in fs if f.kind == "file"}
    assert names == set(W.KNOWN_FILES)
    for k in W.KNOWN_FILES.values():
        assert k.size > 0 and len(k.sha256) == 64 and set(k.sha256) <= set("0123456789abcdef")


@pytest.mark.parametrize("data, check, needle", [
    (b"", "corrupt", "empty file (0 bytes)"),
    (b"<!DOCTYPE html><html><head><title>404</title></head></html>", "corrupt", "HTML"),
    (b"PK\x03\x04", "corrupt", "truncated or corrupt PyTorch checkpoint"),
    (b"\x80\x02" + b"x" * 998, "wrong size", "1000 bytes, published size 6341481"),
])
def test_verify_fails_damaged_files_with_the_redownload_command(tmp_path, run_cli, data, check, needle):
    (tmp_path / "mlsd_large_512_fp32.pth").write_bytes(data)
    rows = catalogue.status(["mlsd"], tmp_path, hashes=True)
    assert rows[0].check == check and rows[0].ok is False
    code, out, err = run_cli("weights", "verify", "mlsd", "--weights-dir", str(tmp_path))
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 1 and len(lines) == 1, err
    assert needle in err and "cnet weights pull mlsd" in err and "mlsd_large_512_fp32.pth" in err


def test_right_size_wrong_hash_is_a_mismatch(tmp_path, monkeypatch):
    f = tmp_path / "mlsd_large_512_fp32.pth"
    f.write_bytes(b"\x80\x02" + b"0" * 98)
    monkeypatch.setitem(W.KNOWN_FILES, "mlsd_large_512_fp32.pth", W.KnownFile(100, "0" * 64))
    monkeypatch.setitem(W.KNOWN_SHA256, "mlsd_large_512_fp32.pth", "0" * 64)
    (s,) = catalogue.status(["mlsd"], tmp_path, hashes=True)
    assert s.check == "MISMATCH" and s.ok is False
    import hashlib

    monkeypatch.setitem(W.KNOWN_FILES, "mlsd_large_512_fp32.pth",
                        W.KnownFile(100, hashlib.sha256(f.read_bytes()).hexdigest()))
    monkeypatch.setitem(W.KNOWN_SHA256, "mlsd_large_512_fp32.pth", hashlib.sha256(f.read_bytes()).hexdigest())
    (s,) = catalogue.status(["mlsd"], tmp_path, hashes=True)
    assert s.check == "ok" and s.ok is True


@pytest.mark.parametrize("data, needle", [
    (b"<html><body>Rate limited</body></html>", "HTML"),
    (b"", "empty file"),
    (b"garbage that is no checkpoint", "not a PyTorch checkpoint"),
    (b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 6341481\n", "git-lfs pointer"),
])
def test_loader_names_corrupt_files_with_the_pull_command(tmp_path, data, needle):
    """The annotator that loads a damaged file names the command that fetches it again; a file the loader is
    given without that hint says to download it again."""
    import numpy as np

    from cnetcli.annotators import annotate
    from cnetcli.errors import ModelLoadError

    f = tmp_path / "mlsd_large_512_fp32.pth"
    f.write_bytes(data)
    with pytest.raises(ModelLoadError) as e:
        annotate(np.zeros((64, 64, 3), np.uint8), "mlsd", weights_dir=str(tmp_path), offline=True,
                 detect_resolution=64)
    msg = str(e.value)
    assert needle in msg and "corrupt weight file" in msg and "cnet weights pull mlsd" in msg
    assert "--trust-pickle" not in msg and "\n" not in msg
    with pytest.raises(ModelLoadError, match="download it again"):
        W.load_state_dict(f)


def test_annotate_missing_weight_through_cli_list(tmp_path, run_cli, monkeypatch):
    monkeypatch.setenv("CNET_WEIGHTS_DIR", str(tmp_path))
    code, out, err = run_cli("weights", "list", "pose", "--json", "--no-hash")
    rows = json.loads(out)
    assert code == 0 and [r["present"] for r in rows] == [False, False, False]
