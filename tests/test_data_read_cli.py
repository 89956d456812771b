"""`cnet train --data` on the forms `datasets` writes, end to end on the tiny base (one step each)."""

from __future__ import annotations

import pytest
from test_data_read import N, _datasets_cache, _table  # noqa: F401 - the fixture is used by name

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_train_on_hub_parquet_layout_and_save_to_disk(run_cli, tiny_sd_dir, tmp_path):
    ds = _table()
    hub = tmp_path / "hub"
    (hub / "data").mkdir(parents=True)
    ds.to_parquet(str(hub / "data/train-00000-of-00001.parquet"))
    ds.save_to_disk(str(tmp_path / "saved"))
    for data in (hub, tmp_path / "saved"):
        out = tmp_path / f"out-{data.name}"
        code, _, err = run_cli("train", "--base", str(tiny_sd_dir), "--data", str(data), "--output", str(out),
                               "--resolution", "64", "--batch-size", "2", "--max-steps", "1",
                               "--checkpoint-every", "0", "--report-to", "none")
        assert code == 0, err
        assert (out / "controlnet" / "config.json").is_file()
    code, _, err = run_cli("train", "--base", str(tiny_sd_dir), "--data", str(hub), "--output", str(tmp_path / "o"),
                           "--image-column", "photo", "--resolution", "64", "--max-steps", "1")
    assert code == 2 and "Traceback" not in err
    assert "--image-column photo: not a column" in err and "columns: image, conditioning_image, text" in err
