"""Issue #24.3: containment is checked when a row's file is opened, not only when the dataset is indexed (the
opened file must be the one validated: fstat of the open descriptor against its device and inode), and FIFOs
and other non-regular files are refused by the one input opener (`fsguard.open_input`), so nothing blocks."""

from __future__ import annotations

import os
import signal

import hostile_inputs as H
import pytest

from cnetcli.data import read_dataset
from cnetcli.errors import InputError


@pytest.fixture
def no_hang():
    """A blocked open would hang the suite: fail after 10 s instead."""
    def boom(*_):
        raise TimeoutError("blocked on a FIFO")

    old = signal.signal(signal.SIGALRM, boom)
    signal.alarm(10)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def _indexed(tmp_path):
    from tests.test_train import _write_dataset

    d = _write_dataset(tmp_path / "ds", n=3)
    return d, read_dataset(d)


def test_a_row_swapped_for_a_symlink_after_indexing_is_refused(tmp_path):
    from cnetcli.training.data import PairDataset, decodable_rows

    d, idx = _indexed(tmp_path)
    secret = H.good_image(tmp_path / "secret.png", seed=7)  # outside the dataset folder
    (d / "images/1.png").unlink()
    os.symlink(secret, d / "images/1.png")
    ds = PairDataset(idx, 32)
    with pytest.raises(InputError, match="changed since the dataset was indexed"):
        ds.sample(1)
    keep, why = decodable_rows(ds)
    assert keep == [0, 2] and "1.png: changed since the dataset was indexed" in why
    assert idx.keep_only(keep, why) == 1 and idx.skip_counts == {"undecodable image": 1}


def test_a_row_replaced_by_another_file_is_refused(tmp_path):
    d, idx = _indexed(tmp_path)
    H.good_image(d / "images/new.png", seed=9)
    os.replace(d / "images/new.png", d / "images/2.png")
    with pytest.raises(InputError, match="changed since"):
        idx.open(idx.rows[2].image)
    assert idx.open(idx.rows[0].image).size == (40, 48)  # untouched rows still open


@pytest.mark.usefixtures("no_hang")
def test_a_row_swapped_for_a_fifo_is_refused_without_blocking(tmp_path):
    d, idx = _indexed(tmp_path)
    (d / "conditioning_images/0.png").unlink()
    os.mkfifo(d / "conditioning_images/0.png")
    with pytest.raises(InputError, match="not a regular file"):
        idx.open(idx.rows[0].hint)


@pytest.mark.usefixtures("no_hang")
def test_the_input_opener_refuses_fifos_and_folders(tmp_path):
    from cnetcli.images import load_image

    os.mkfifo(tmp_path / "pipe.png")
    with pytest.raises(InputError, match="pipe.png: not a regular file"):
        load_image(tmp_path / "pipe.png")
    with pytest.raises(InputError, match="is a folder"):
        load_image(tmp_path)
    os.symlink(tmp_path / "pipe.png", tmp_path / "link.png")
    with pytest.raises(InputError, match="link.png: not a regular file"):
        load_image(tmp_path / "link.png")
