import subprocess
import sys

import pytest

import cnetcli


def test_version(run_cli):
    code, out, _ = run_cli("--version")
    assert code == 0 and cnetcli.__version__ in out


def test_help_lists_commands(run_cli):
    code, out, _ = run_cli("--help")
    assert code == 0
    for cmd in ("annotate", "train", "generate"):
        assert cmd in out


def test_cli_import_is_light():
    code = "import sys, cnetcli.cli; print(' '.join(m for m in ('torch','diffusers','transformers','cv2') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == ""


def test_help_imports_no_numpy():
    """`cnet --help` and every command's --help need names, not arrays: the hint registry, images, eval and demo
    modules import numpy only in the functions that compute."""
    code = ("import sys, cnetcli.cli\nfrom typer.testing import CliRunner\n"
            "for c in ('', 'annotate', 'train', 'generate', 'eval', 'data', 'weights', 'runs', 'demo'):\n"
            "    r = CliRunner().invoke(cnetcli.cli.app, [*c.split(), '--help'])\n"
            "    assert r.exit_code == 0, (c, r.output)\n"
            "print(' '.join(m for m in ('numpy', 'PIL', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == ""


def test_python_m_cnetcli():
    r = subprocess.run([sys.executable, "-m", "cnetcli", "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and "cnet" in r.stdout


def test_tiny_sd_round_trip(tiny_sd_dir):
    from cnetcli.models.sd import load_base_components

    comps = load_base_components(tiny_sd_dir, offline=True)
    assert set(comps) == {"unet", "vae", "text_encoder", "tokenizer", "scheduler"}
    ids = comps["tokenizer"]("red circle").input_ids
    assert len(ids) == 4  # bos, red, circle, eos: whole-word merges work


def test_missing_hub_model_is_clear_error():
    import pytest

    from cnetcli.errors import MissingWeightsError
    from cnetcli.models.sd import load_base_components

    with pytest.raises(MissingWeightsError, match="hf download"):
        load_base_components("nobody/does-not-exist", offline=True, parts=("scheduler",))


def test_clip_tokenizer_whole_words_even_when_merges_compete(tmp_path):
    """"green" brings a "g r" merge that pre-empts "background"'s chain; every word must still be one token."""
    from transformers import CLIPTokenizer

    from cnetcli.models.tiny import write_clip_tokenizer

    words = ("green", "red", "circle", "with", "background", "grey", "ground", "back")
    tok = CLIPTokenizer.from_pretrained(str(write_clip_tokenizer(tmp_path, words)))
    for w in words:
        assert tok.tokenize(w) == [w + "</w>"], (w, tok.tokenize(w))


def _command_paths() -> list[list[str]]:
    """Every command path of the CLI: [], ["annotate"], ..., ["weights", "pull"] (read from the click tree)."""
    import typer

    from cnetcli.cli import app

    def walk(cmd, path):
        yield path
        for name, sub in sorted(getattr(cmd, "commands", {}).items()):
            yield from walk(sub, [*path, name])

    return list(walk(typer.main.get_command(app), []))


def test_every_command_is_checked_below():
    assert ["weights", "pull"] in _command_paths() and ["data", "circles"] in _command_paths()
    assert len(_command_paths()) >= 13


@pytest.mark.parametrize("cmd", _command_paths(), ids=lambda c: " ".join(c) or "cnet")
def test_help_shows_no_bool_metavar_and_defaults_one_way(run_cli, monkeypatch, cmd):
    """#23.9: an on/off flag takes no value, so its help row shows none (typer prints `<bool>`, its own `--help`
    row included), and every default is shown one way, typer's `[default: ...]` (a described default in
    parentheses, as click writes `(dynamic)`): never `(default ...)` in the text, nor a bare `[0]`."""
    import re

    monkeypatch.setenv("COLUMNS", "240")  # one row per option: nothing wraps
    code, out, err = run_cli(*cmd, "--help")
    assert code == 0, err
    rows = [ln for ln in out.splitlines() if ln.startswith("│ ")]
    assert [ln for ln in rows if "<bool>" in ln] == []
    assert [ln for ln in rows if re.search(r"\(default[ :]", ln, re.I)] == []
    assert [ln for ln in rows if re.search(r"(?<!default: )\[\d[^\]]*\]", ln)] == []
