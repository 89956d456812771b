"""`Provenance`: one dataclass written by annotate/circles/demo/generate and read by generate, eval and training
validation; reading never raises on a hostile text chunk. Annotator flags mean what they say (#11.6)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, PngImagePlugin
from test_annotate import photos

from cnetcli.data.provenance import PNG_KEY, Provenance
from cnetcli.errors import InputError, UsageError
from cnetcli.images import read_png_metadata, save_png


def _png_with_chunk(path, text):
    info = PngImagePlugin.PngInfo()
    if text is not None:
        info.add_text(PNG_KEY, text)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(path, pnginfo=info)
    return path


def test_round_trip_and_extra_fields(tmp_path):
    p = Provenance(type="canny", params={"low": 1, "high": 2}, detect_resolution=None, image_resolution=64,
                   keep_size=True, source="/x/y.jpg", extra={"circle": {"r": 3}})
    p.write(tmp_path / "h.png", np.zeros((8, 8, 3), np.uint8))
    back = Provenance.read(tmp_path / "h.png")
    assert back is not None and back.type == "canny" and dict(back.params) == {"low": 1, "high": 2}
    assert back.image_resolution == 64 and back.detect_resolution is None and back.keep_size
    assert back.source == "/x/y.jpg" and back.extra == {"circle": {"r": 3}} and back.schema == 1 and back.cnet
    assert read_png_metadata(tmp_path / "h.png")["type"] == "canny"  # the same chunk other tools read


@pytest.mark.parametrize("text", ['{"type": "canny", "params": {"low": NaN}}', "not json", "[1, 2]", '"canny"',
                                  '{"params": {}}', '{"type": 5}', "{" * 5000, None])
def test_hostile_chunks_read_as_none_or_one_clear_error(tmp_path, text):
    path = _png_with_chunk(tmp_path / "h.png", text)
    assert Provenance.read(path) is None
    if text is not None:
        with pytest.raises(InputError, match="h.png"):
            Provenance.read(path, strict=True)


def test_wrong_field_types_are_dropped_not_trusted(tmp_path):
    path = _png_with_chunk(tmp_path / "h.png", '{"type": "canny", "params": [1], "detect_resolution": "big", '
                                               '"image_resolution": [512], "keep_size": "yes", "source": 3}')
    p = Provenance.read(path)
    assert p is not None and p.type == "canny" and dict(p.params) == {}
    assert p.detect_resolution is None and p.image_resolution is None and p.keep_size is False and p.source is None
    with pytest.raises(InputError, match=r"h.png.*field params: expected an object"):
        Provenance.read(path, strict=True)
    # a number that overflows a float is not JSON cnet reads: the record is unreadable, not half-trusted
    path = _png_with_chunk(tmp_path / "o.png", '{"type": "canny", "image_resolution": 1e400}')
    assert Provenance.read(path) is None
    with pytest.raises(InputError, match=r"o.png.*NaN or infinity"):
        Provenance.read(path, strict=True)
    assert Provenance.read(tmp_path / "missing.png") is None
    (tmp_path / "garbage.png").write_bytes(b"\x89PNG garbage")
    assert Provenance.read(tmp_path / "garbage.png") is None


def test_nan_is_never_written():
    with pytest.raises(ValueError):
        Provenance(type="blur", params={"sigma": float("nan")}).to_json()


def test_readers_use_it_generate_eval_validation(tmp_path):
    from cnetcli.generation.pipeline import _hint_type
    from cnetcli.training.config import TrainConfig
    from cnetcli.training.validate import hint_type_for

    Provenance(type="openpose", params={"hands": True}).write(tmp_path / "p.png", np.zeros((8, 8, 3), np.uint8))
    _png_with_chunk(tmp_path / "nan.png", '{"type": NaN}')
    assert _hint_type(str(tmp_path / "p.png"), None) == "openpose"
    assert _hint_type(str(tmp_path / "nan.png"), None) is None
    cfg = TrainConfig(base="x", data=str(tmp_path), output=str(tmp_path / "out"))
    assert hint_type_for(cfg, str(tmp_path / "p.png")) == ("openpose", {"hands": True})
    assert hint_type_for(cfg, str(tmp_path / "nan.png")) == (None, None)


# --- #11.6: flags mean what they say ------------------------------------------------------------------------

def test_canny_refuses_detect_resolution(run_cli, tmp_path):
    from cnetcli.annotation import AnnotateConfig

    photos(tmp_path / "in", 1, size=64)
    code, _, err = run_cli("annotate", "-t", "canny", "--detect-resolution", "256", str(tmp_path / "in"),
                           "-o", str(tmp_path / "o"))
    assert code == 2 and "--detect-resolution does not apply to hint type 'canny'" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "o").exists()
    for t in ("scribble", "tile", "blur"):
        with pytest.raises(UsageError, match="--detect-resolution"):
            AnnotateConfig(inputs=(str(tmp_path / "in"),), type=t, detect_resolution=256)


def test_provenance_records_the_values_used(run_cli, tmp_path):
    photos(tmp_path / "in", 1, size=64)
    code, _, err = run_cli("annotate", "-t", "canny", str(tmp_path / "in"), "-o", str(tmp_path / "c"), "-j", "1",
                           "--image-resolution", "128")
    assert code == 0, err
    meta = read_png_metadata(tmp_path / "c" / "astronaut.png")
    assert meta["detect_resolution"] is None and meta["image_resolution"] == 128  # canny has no detect size
    code, _, err = run_cli("annotate", "-t", "hough", str(tmp_path / "in"), "-o", str(tmp_path / "h"), "-j", "1",
                           "--image-resolution", "128", "--detect-resolution", "256")
    assert code == 0, err
    meta = read_png_metadata(tmp_path / "h" / "astronaut.png")
    assert meta["detect_resolution"] == 256 and meta["image_resolution"] == 128


def test_old_dict_provenance_still_reads(tmp_path):
    save_png(tmp_path / "old.png", np.zeros((8, 8, 3), np.uint8),
             {"cnet": "0.1.0", "type": "canny", "params": {}, "detect_resolution": 512})
    p = Provenance.read(tmp_path / "old.png")
    assert p is not None and p.schema == 0 and p.detect_resolution == 512
