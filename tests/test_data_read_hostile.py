"""Hostile dataset rows: paths out of the dataset, names of any bytes, malformed rows. Never a traceback."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from test_data_read import N, _datasets_cache, _files, _pixels  # noqa: F401 - the fixture is used by name

from cnetcli.data import read_dataset
from cnetcli.errors import InputError


def _png(path, value=128):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((64, 64, 3), value, np.uint8)).save(path)
    return path


def _append(d, *recs, name="metadata.jsonl"):
    with open(d / name, "a") as f:
        for r in recs:
            f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")


def _row(img, hint="conditioning_images/0.png", text="t"):
    return {"file_name": img, "conditioning_image_file_name": hint, "text": text}


# ---- data stays inside the data ---------------------------------------------------------------------------


def test_outside_paths_are_skipped_unless_allowed(tmp_path):
    secret = _png(tmp_path / "private" / "secret.png", 7)
    d = _files(tmp_path / "ds")
    os.symlink(secret, d / "images" / "link.png")  # a symlink inside that points out
    _png(d / "images" / "inner.png")
    os.symlink(d / "images" / "inner.png", d / "images" / "ok-link.png")  # one that stays inside
    _append(d, _row(str(secret)), _row("../private/secret.png"), _row("images/../../private/secret.png"),
            _row("images/link.png"), _row("images/0.png", hint="../private/secret.png"), _row("images/ok-link.png"))
    idx = read_dataset(d)
    assert (len(idx), idx.skip_counts) == (N + 1, {"outside the dataset folder": 5})
    assert "metadata.jsonl:4: " in idx.skip_examples[0] and "--allow-outside-paths" in idx.skip_examples[0]
    assert all(r.image.resolve().is_relative_to(d.resolve()) for r in idx.rows)
    with pytest.raises(InputError, match="metadata.jsonl:4: .*secret.png is outside the dataset folder"):
        read_dataset(d, strict=True)
    assert len(read_dataset(d, allow_outside_paths=True)) == N + 6


def test_outside_paths_in_the_tutorial_layout(tmp_path):
    secret = _png(tmp_path / "secret.png")
    t = tmp_path / "tut"
    _png(t / "source/0.png")
    _png(t / "target/0.png")
    lines = [{"source": "source/0.png", "target": "target/0.png", "prompt": "p"},
             {"source": "source/0.png", "target": "../secret.png", "prompt": "q"},
             {"source": str(secret), "target": "target/0.png", "prompt": "r"}]
    (t / "prompt.json").write_text("".join(json.dumps(x) + "\n" for x in lines))
    idx = read_dataset(t)
    assert (idx.layout, [r.text for r in idx.rows], idx.skip_counts) == (
        "tutorial", ["p"], {"outside the dataset folder": 2})
    assert len(read_dataset(t, allow_outside_paths=True)) == 3


def test_outside_paths_in_a_table(tmp_path):
    """`to_parquet` of a Dataset built from file paths stores the paths, not the bytes: the same rule."""
    import datasets

    paths = [str(_png(tmp_path / "elsewhere" / f"{i}.png", 30 * i)) for i in range(2)]
    ds = datasets.Dataset.from_dict({"image": paths, "conditioning_image": paths, "text": ["a", "b"]})
    ds = ds.cast_column("image", datasets.Image()).cast_column("conditioning_image", datasets.Image())
    (tmp_path / "pq").mkdir()
    ds.to_parquet(str(tmp_path / "pq" / "train.parquet"))
    with pytest.raises(InputError, match="no usable rows .2 unreadable rows skipped .2 outside the dataset folder"):
        read_dataset(tmp_path / "pq")
    idx = read_dataset(tmp_path / "pq", allow_outside_paths=True)
    assert np.asarray(_pixels(idx)[1][0]).max() == 30


# ---- file names of any bytes -------------------------------------------------------------------------------


def test_non_utf8_names(tmp_path):
    d = _files(tmp_path / "ds")
    raw = os.fsencode(d / "images") + b"/caf\xe9.png"
    os.rename(_png(tmp_path / "tmp.png", 99), raw)  # a Latin-1 name on disk
    with open(d / "metadata.jsonl", "ab") as f:
        f.write(b'{"file_name": "images/caf\xe9.png", "conditioning_image_file_name": "conditioning_images/0.png", '
                b'"text": "raw bytes"}\n')  # the metadata written in Latin-1 too
        f.write(b'{"file_name": "images/caf\\udce9.png", "conditioning_image_file_name": '
                b'"conditioning_images/0.png", "text": "escaped"}\n')  # surrogate-escaped, as json.dumps writes it
        f.write(b'{"file_name": "images/gon\xe9.png", "conditioning_image_file_name": "conditioning_images/0.png"}\n')
    idx = read_dataset(d)
    got = {r.text: np.asarray(_pixels_of(r))[0, 0, 0] for r in idx.rows if r.text in ("raw bytes", "escaped")}
    assert got == {"raw bytes": 99, "escaped": 99}
    assert idx.skip_counts == {"missing file": 1}
    assert "gon\\xe9.png" in idx.skip_examples[0]
    idx.skip_summary().encode("utf-8")  # printable: no lone surrogates reach the terminal
    with pytest.raises(InputError) as e:
        read_dataset(d, strict=True)
    str(e.value).encode("utf-8")


def test_non_utf8_dataset_folder(tmp_path):
    d = os.fsdecode(os.fsencode(tmp_path) + b"/d\xe9")
    _files(__import__("pathlib").Path(d))
    assert len(read_dataset(d)) == N


def test_non_utf8_folder_of_a_datasets_form(tmp_path):
    from test_data_read import _table

    d = os.fsdecode(os.fsencode(tmp_path) + b"/saved\xe9")
    _table().save_to_disk(d)
    with pytest.raises(InputError, match=r"saved\\xe9: the `datasets` library cannot open a path that is not "
                                         "valid UTF-8; rename the folder"):
        read_dataset(d)


def _pixels_of(row):
    from cnetcli.data import open_image

    return open_image(row.image)


# ---- malformed rows -----------------------------------------------------------------------------------------


def test_malformed_rows_are_skipped_and_counted(tmp_path):
    d = _files(tmp_path / "ds")
    (d / "images/text.png").write_text("not an image")
    (d / "images/empty.png").write_bytes(b"")
    os.mkfifo(d / "images/fifo.png")  # opening it would block for ever
    os.symlink("loop.png", d / "images/loop.png")
    (d / "images/folder.png").mkdir()
    _append(d, "{broken", "[1, 2]", "42", _row("images/missing.png"), _row(5), _row("images/0.png", text=3),
            {"conditioning_image_file_name": "conditioning_images/0.png"}, _row("images/text.png"),
            _row("images/empty.png"), _row("images/fifo.png"), _row("images/loop.png"), _row("images/folder.png"),
            _row("images/a\u0000b.png"), "")
    idx = read_dataset(d)
    assert len(idx) == N
    assert idx.skip_counts == {"bad JSON": 1, "not a JSON object": 2, "missing file": 1, "wrong type": 2,
                               "missing field": 1, "not an image": 1, "empty file": 1, "not a regular file": 2,
                               "unreadable file": 1, "unreadable name": 1}


def test_truncated_images(tmp_path):
    """PNG/JPEG cut short are skipped when read (end marker missing, one small read, no decoding); damage the
    reader cannot see without decoding is found by the training's decoding pass, which drops and counts it
    (never replacing it by another row)."""
    from PIL import Image

    from cnetcli.training.data import PairDataset, decodable_rows

    d = _files(tmp_path / "ds", n=2)
    Image.open(d / "images/1.png").convert("RGB").save(d / "images/1.jpg", quality=90)
    for name in ("1.png", "1.jpg"):
        data = (d / "images" / name).read_bytes()
        (d / "images" / f"cut-{name}").write_bytes(data[:-100])  # headers intact, the end lost
    _append(d, _row("images/cut-1.png"), _row("images/cut-1.jpg"), _row("images/1.jpg"))
    idx = read_dataset(d)
    assert (len(idx), idx.skip_counts) == (3, {"truncated image": 2})
    assert "cut-1.png: truncated PNG" in idx.skip_examples[0]
    data = (d / "images/0.png").read_bytes()  # a damaged body that keeps its end marker
    (d / "images/0.png").write_bytes(data[:60] + bytes(len(data) - 72) + data[-12:])
    ds = PairDataset(read_dataset(d), 64)
    keep, why = decodable_rows(ds)
    assert keep == [1, 2] and "0.png: cannot decode image" in why
    assert ds.index.keep_only(keep, why) == 1 and ds.index.skip_counts == {"truncated image": 2, "undecodable image": 1}
    assert ds[(0, False, False)]["index"] == 0 and len(ds) == 2


def test_train_applies_allow_outside_paths(tmp_path):
    """The loop hands the setting to the reader (the base is never reached when no row is left)."""
    from cnetcli.errors import MissingWeightsError
    from cnetcli.training import TrainConfig, train

    elsewhere = _files(tmp_path / "elsewhere", n=1)
    d = tmp_path / "ds"
    d.mkdir()
    _append(d, _row(str(elsewhere / "images/0.png"), str(elsewhere / "conditioning_images/0.png")))
    kw = dict(base="nobody/none", data=str(d), output=str(tmp_path / "o"), report_to="none")
    with pytest.raises(InputError, match="no usable rows .*1 outside the dataset folder"):
        train(TrainConfig(**kw))
    with pytest.raises(MissingWeightsError):  # past the reader: the (absent) base is next
        train(TrainConfig(**kw, allow_outside_paths=True))


def test_csv_metadata_rows(tmp_path):
    d = _files(tmp_path / "ds", meta="metadata.csv")
    _append(d, "images/missing.png,conditioning_images/0.png,x", "images/0.png", name="metadata.csv")
    idx = read_dataset(d)
    assert len(idx) == N and idx.skip_counts == {"missing file": 1, "wrong type": 1}
