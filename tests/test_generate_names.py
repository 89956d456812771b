"""Repeat runs into one output folder: the second file of a name is `STEM_2`, never `STEM-1` (stems end in
`-SEED`, so `photo_00-1-1.png` read as a seed), and nothing is overwritten."""

from __future__ import annotations

import numpy as np

from cnetcli.generation.output import save_grid, save_result

META = {"sampler": "ddim", "steps": 20, "cfg": 9.0, "seed": 1, "width": 8, "height": 8, "base": "cnet-tiny"}


def test_repeat_runs_number_files_after_the_seed(tmp_path):
    img = np.zeros((8, 8, 3), np.uint8)
    names = [save_result(tmp_path, "photo_00-1", img + i, META).name for i in range(3)]
    assert names == ["photo_00-1.png", "photo_00-1_2.png", "photo_00-1_3.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [*names, "photo_00-1.json", "photo_00-1_2.json", "photo_00-1_3.json"])
    from PIL import Image

    assert [int(np.asarray(Image.open(tmp_path / n))[0, 0, 0]) for n in names] == [0, 1, 2]  # none overwritten


def test_repeat_grids(tmp_path):
    rows = [[np.zeros((8, 8, 3), np.uint8)]]
    assert [save_grid(tmp_path, rows, {}).name for _ in range(2)] == ["grid.png", "grid_2.png"]
