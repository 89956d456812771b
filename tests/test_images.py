"""Reading every odd image kind the issue names, and refusing every bad-file kind with a clear reason."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from cnetcli.errors import InputError
from cnetcli.images import load_image, read_png_metadata, save_png


def _rgb(w=40, h=24):
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 6 % 256, y * 10 % 256, (x + y) * 3 % 256], axis=2).astype(np.uint8)


def test_exif_rotated_jpeg_is_upright(tmp_path):
    im = Image.fromarray(_rgb(40, 24))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW on display
    p = tmp_path / "rot.jpg"
    im.save(p, exif=exif.tobytes())
    arr = load_image(p)
    assert arr.shape == (40, 24, 3) and arr.dtype == np.uint8


def test_rgba_composited_over_white(tmp_path):
    a = np.zeros((8, 8, 4), np.uint8)
    a[..., 0] = 255
    a[:4, :, 3] = 255  # top half opaque red, bottom transparent
    p = tmp_path / "rgba.png"
    Image.fromarray(a, "RGBA").save(p)
    arr = load_image(p)
    assert arr.shape == (8, 8, 3)
    assert tuple(arr[0, 0]) == (255, 0, 0) and tuple(arr[7, 7]) == (255, 255, 255)


def test_la_and_l_and_palette_transparency(tmp_path):
    la = Image.fromarray(np.dstack([np.full((6, 6), 50, np.uint8), np.zeros((6, 6), np.uint8)]), "LA")
    la.save(tmp_path / "la.png")
    assert tuple(load_image(tmp_path / "la.png")[0, 0]) == (255, 255, 255)  # fully transparent -> white
    Image.fromarray(np.full((5, 7), 77, np.uint8), "L").save(tmp_path / "l.png")
    arr = load_image(tmp_path / "l.png")
    assert arr.shape == (5, 7, 3) and tuple(arr[0, 0]) == (77, 77, 77)
    p = Image.new("P", (4, 4), 0)
    p.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    p.putpixel((0, 0), 1)
    p.info["transparency"] = 0
    p.save(tmp_path / "p.png", transparency=0)
    arr = load_image(tmp_path / "p.png")
    assert tuple(arr[0, 0]) == (200, 100, 50) and tuple(arr[3, 3]) == (255, 255, 255)


def test_cmyk_jpeg_and_16bit_png(tmp_path):
    Image.fromarray(_rgb()).convert("CMYK").save(tmp_path / "cmyk.jpg")
    arr = load_image(tmp_path / "cmyk.jpg")
    assert arr.shape == (24, 40, 3) and arr.dtype == np.uint8
    assert np.abs(arr.astype(int) - _rgb().astype(int)).mean() < 20
    a16 = (np.arange(24 * 40, dtype=np.uint16).reshape(24, 40) * 60)
    Image.fromarray(a16).save(tmp_path / "i16.png")
    arr = load_image(tmp_path / "i16.png")
    assert arr.dtype == np.uint8 and arr.shape == (24, 40, 3)
    assert arr[-1, -1, 0] == round(float(a16[-1, -1]) * 255 / 65535)


def test_animated_gif_first_frame_webp_tiff_bmp(tmp_path):
    f1, f2 = Image.new("RGB", (9, 9), (255, 0, 0)), Image.new("RGB", (9, 9), (0, 0, 255))
    f1.save(tmp_path / "anim.gif", save_all=True, append_images=[f2], duration=100, loop=0)
    arr = load_image(tmp_path / "anim.gif")
    assert arr.shape == (9, 9, 3) and arr[0, 0, 0] > 200 and arr[0, 0, 2] < 50
    src = _rgb()
    for ext, kw in (("webp", {"lossless": True}), ("tiff", {}), ("bmp", {})):
        Image.fromarray(src).save(tmp_path / f"x.{ext}", **kw)
        assert np.array_equal(load_image(tmp_path / f"x.{ext}"), src), ext


def bomb_png(path, w=100_000, h=100_000):
    """A tiny PNG whose header claims w x h pixels (a decompression bomb)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


def make_bad_files(d):
    (d / "empty.png").write_bytes(b"")
    good = d / "_tmp_good.png"
    Image.fromarray(_rgb(64, 64)).save(good)
    data = good.read_bytes()
    good.unlink()
    (d / "truncated.png").write_bytes(data[: len(data) // 2])
    (d / "notes.jpg").write_text("this is not an image\n")
    bomb_png(d / "bomb.png")
    return {"empty.png": "empty file", "truncated.png": "truncated", "notes.jpg": "not an image",
            "bomb.png": "decompression bomb"}


def test_bad_files_raise_one_line_input_errors(tmp_path):
    expected = make_bad_files(tmp_path)
    for name, reason in expected.items():
        with pytest.raises(InputError) as e:
            load_image(tmp_path / name)
        msg = str(e.value)
        assert name in msg and reason in msg and "\n" not in msg, msg
    with pytest.raises(InputError, match="no such file"):
        load_image(tmp_path / "missing.png")


def test_png_metadata_round_trip(tmp_path):
    save_png(tmp_path / "h.png", _rgb(), {"type": "canny", "params": {"low": 1}})
    assert read_png_metadata(tmp_path / "h.png") == {"type": "canny", "params": {"low": 1}}
    assert [p.name for p in tmp_path.iterdir()] == ["h.png"]  # no temp file left


def test_sizes_are_guarded_before_allocation():
    from cnetcli.images import check_size, resize_image, resize_to

    wide = np.zeros((1, 65535, 3), np.uint8)  # ControlNet's rule would make it 33553920 x 512 (51 GB)
    with pytest.raises(InputError, match="65535x1 to a short side of 512.*over the .*-pixel limit"):
        resize_image(wide, 512)
    with pytest.raises(InputError, match="100000x100000 pixels is over"):
        resize_to(_rgb(), 100_000, 100_000)
    with pytest.raises(InputError, match="empty"):
        check_size(0, 5)
    assert resize_image(_rgb(64, 32), 64).shape == (64, 128, 3)
