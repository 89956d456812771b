"""`cnet data circles`: the arguments the command hands the core, and bad seeds/outputs as one line."""

from __future__ import annotations

import pytest


def test_cli_hands_the_core_its_arguments(tmp_path, run_cli, monkeypatch):
    import cnetcli.synthetic as syn

    seen = {}

    def fake(output, **kw):
        seen.update(kw, output=output)
        return output

    monkeypatch.setattr(syn, "write_circles", fake)
    code, out, err = run_cli("data", "circles", str(tmp_path / "ds"), "-n", "10", "--seed", str(2**32 - 1),
                             "--holdout", "2", "--size", "32")
    assert code == 0, err
    assert seen == {"output": tmp_path / "ds", "count": 10, "size": 32, "seed": 2**32 - 1, "holdout": 2,
                    "thickness": 1, "overwrite": False, "heldout_output": None}
    assert "wrote 8 samples" in out and "wrote 2 held-out samples" in out


@pytest.mark.parametrize("args, code_, words", [
    (["--seed", "-1"], 2, ["--seed", "0..4294967295"]),
    (["--seed", str(2**32)], 2, ["--seed"]),
    (["--count", "0"], 2, ["--count"]),
    (["--size", "100000"], 2, ["--size"]),
])
def test_bad_values_one_line(tmp_path, run_cli, args, code_, words):
    code, out, err = run_cli("data", "circles", str(tmp_path / "ds"), *args)
    assert code == code_ and len(err.strip().splitlines()) == 1 and "Traceback" not in out + err
    for w in words:
        assert w in err
    assert not (tmp_path / "ds").exists()


@pytest.mark.parametrize("where", ["file", "under_file", "heldout_file"])
def test_outputs_that_cannot_be_folders(tmp_path, run_cli, where):
    (tmp_path / "f").write_text("keep")
    out_dir = {"file": tmp_path / "f", "under_file": tmp_path / "f" / "ds", "heldout_file": tmp_path / "ds"}[where]
    extra = ["--holdout", "1", "--heldout-output", str(tmp_path / "f")] if where == "heldout_file" else []
    code, out, err = run_cli("data", "circles", str(out_dir), "-n", "4", *extra)
    assert code == 1 and len(err.strip().splitlines()) == 1 and "Traceback" not in out + err
    assert str(tmp_path / "f") in err
    assert (tmp_path / "f").read_text() == "keep" and sorted(p.name for p in tmp_path.iterdir()) == ["f"]


def test_writes_a_dataset(tmp_path, run_cli):
    code, out, err = run_cli("data", "circles", str(tmp_path / "ds"), "-n", "3", "--size", "16")
    assert code == 0, err
    assert len((tmp_path / "ds" / "metadata.jsonl").read_text().splitlines()) == 3
