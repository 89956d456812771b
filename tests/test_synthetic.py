"""`cnet data circles`: layout, determinism, the hint is the circle's outline."""

import json

import numpy as np
import pytest

from cnetcli.errors import UsageError
from cnetcli.images import load_image, read_png_metadata
from cnetcli.synthetic import COLORS, circles, draw_circle, draw_outline, parse_caption, write_circles


def test_layout_and_holdout(tmp_path, run_cli):
    out = tmp_path / "c"
    code, stdout, err = run_cli("data", "circles", "--count", "12", "--size", "64", "--holdout", "2", str(out))
    assert code == 0, err
    lines = [json.loads(x) for x in (out / "metadata.jsonl").read_text().splitlines()]
    assert len(lines) == 10
    for rec in lines:
        assert set(rec) >= {"file_name", "conditioning_image_file_name", "text"}
        img, hint = load_image(out / rec["file_name"]), load_image(out / rec["conditioning_image_file_name"])
        assert img.shape == hint.shape == (64, 64, 3)
        assert parse_caption(rec["text"]) is not None
    held = tmp_path / "c-heldout"
    assert len((held / "metadata.jsonl").read_text().splitlines()) == 2
    assert not (out / "heldout").exists()  # never inside OUT: an imagefolder reader would mix the splits
    prov = read_png_metadata(out / lines[0]["conditioning_image_file_name"])
    assert prov["type"] == "circle-outline" and prov["image_resolution"] == 64
    # existing dataset is not overwritten silently
    code, _, err = run_cli("data", "circles", "--count", "3", str(out))
    assert code == 2 and "--overwrite" in err


def test_imagefolder_reads_it(tmp_path):
    datasets = pytest.importorskip("datasets")
    write_circles(tmp_path / "d", count=4, size=32, seed=1)
    ds = datasets.load_dataset("imagefolder", data_dir=str(tmp_path / "d"), split="train")
    assert len(ds) == 4 and {"image", "conditioning_image", "text"} <= set(ds.column_names)


def test_deterministic_and_seeded(tmp_path):
    a, b = write_circles(tmp_path / "a", count=5, size=32, seed=7), write_circles(tmp_path / "b", count=5, size=32, seed=7)
    for f in ("metadata.jsonl",):
        assert (a / f).read_text() == (b / f).read_text()
    assert np.array_equal(load_image(a / "images/000003.png"), load_image(b / "images/000003.png"))
    assert circles(5, 32, 7) != circles(5, 32, 8)
    assert circles(3, 32, 7) == circles(5, 32, 7)[:3]


def test_hint_is_the_outline():
    import cv2

    for c in circles(20, 64, 3):
        img, hint = draw_circle(c, 64), draw_outline(c, 64)
        assert c.color != c.background
        assert tuple(img[c.cy, c.cx]) == COLORS[c.color] and tuple(img[0, 0]) == COLORS[c.background]
        ys, xs = np.nonzero(hint[..., 0])
        r = np.hypot(xs - c.cx, ys - c.cy)
        assert set(np.unique(hint)) <= {0, 255} and np.all(np.abs(r - c.radius) <= 1.0)
        # the outline is where an edge detector finds the circle's boundary
        edges = cv2.Canny(img, 100, 200) > 0
        ey, ex = np.nonzero(edges)
        assert np.median(np.abs(np.hypot(ex - c.cx, ey - c.cy) - c.radius)) <= 1.0


def test_bad_arguments(tmp_path):
    with pytest.raises(UsageError, match="--count"):
        write_circles(tmp_path / "x", count=0)
    with pytest.raises(UsageError, match="--holdout"):
        write_circles(tmp_path / "x", count=3, holdout=3)
    with pytest.raises(UsageError, match="--size"):
        write_circles(tmp_path / "x", count=3, size=4)


def test_parse_caption():
    assert parse_caption("red circle with blue background") == ("red", "blue")
    assert parse_caption("a cat") is None
