"""`cnet eval`: the config the command hands the core (fastapi-cli style), sidecar-relative hint paths, a
movable output folder, and broken sidecars skipped and counted instead of aborting the run."""

from __future__ import annotations

import json
import os
import re
import shutil

import pytest

from cnetcli.images import save_png
from cnetcli.synthetic import circles, draw_circle, draw_outline

PROGRESS = re.compile(r"^[^:]+: \d+/\d+ ")  # the plain progress line printed when stderr is not a terminal


def one_error_line(err):
    lines = [x for x in err.strip().splitlines() if not PROGRESS.match(x)]
    return len(lines) == 1 and lines[0].startswith("error:")



def make_outputs(folder, hints_dir=None, n=3, hint_ref="sidecar"):
    """A `cnet generate`-like folder; hints in `hints_dir` (default: the folder itself), named in the sidecar
    relative to the sidecar ("sidecar"), to the working folder ("cwd", older sidecars) or absolute."""
    hints_dir = hints_dir or folder
    folder.mkdir(parents=True, exist_ok=True)
    hints_dir.mkdir(parents=True, exist_ok=True)
    for i, c in enumerate(circles(n, 64, 1)):
        hint = hints_dir / f"hint_{i}.png"
        save_png(hint, draw_outline(c, 64), {"cnet": "0", "type": "canny", "params": {"low": 100, "high": 200},
                                             "detect_resolution": 64})
        save_png(folder / f"out_{i}.png", draw_circle(c, 64))
        ref = {"sidecar": os.path.relpath(hint, folder), "cwd": os.path.relpath(hint), "abs": str(hint)}[hint_ref]
        (folder / f"out_{i}.json").write_text(json.dumps({"prompt": c.prompt, "prompt_mode": "user", "seed": i,
                                                          "hint": ref, "controlnet": "x"}))
    return folder


def test_cli_hands_the_core_its_config(tmp_path, run_cli, monkeypatch):
    import cnetcli.evaluation as ev

    seen = {}

    def fake(folder, **kw):
        seen.update(kw, folder=folder)
        return {"n": 1, "metrics": {"f1": 0.5}, "f1": 0.5, "by_group": {"[red]x": {"f1": 0.5, "n": 1}},
                "rows": [], "skipped": {}, "skipped_files": []}

    monkeypatch.setattr(ev, "evaluate_folder", fake)
    (tmp_path / "gen").mkdir()
    code, out, err = run_cli("eval", str(tmp_path / "gen"), "--tolerance", "5", "--hint-type", "canny")
    assert code == 0, err
    assert seen["folder"] == str(tmp_path / "gen") and seen["tolerance"] == 5 and seen["hint_type"] == "canny"
    assert seen["relative_to"] == tmp_path / "gen"
    assert "[red]x" in out  # sidecar text is shown literally, not as rich markup
    # cnet.toml [eval] gives defaults; flags win
    (tmp_path / "cnet.toml").write_text('[eval]\ntolerance = 4\nhint_type = "hed"\n')
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli("eval", "gen", "--hint-type", "canny", "-o", "res/e.json")
    assert code == 0, err
    assert seen["tolerance"] == 4 and seen["hint_type"] == "canny" and str(seen["relative_to"]) == "res"
    assert json.loads((tmp_path / "res/e.json").read_text())["f1"] == 0.5


@pytest.mark.parametrize("args, words", [
    (["--tolerance", "-1"], ["--tolerance", "0..64"]),
    (["--tolerance", "1000"], ["--tolerance"]),
    (["--hint-type", "nosuchtype"], ["--hint-type nosuchtype", "no controllability metric"]),
])
def test_bad_flags_one_line(tmp_path, run_cli, args, words):
    make_outputs(tmp_path / "gen", n=1)
    before = sorted(os.listdir(tmp_path / "gen"))
    code, out, err = run_cli("eval", str(tmp_path / "gen"), *args)
    assert code == 2 and one_error_line(err) and "Traceback" not in out + err
    for w in words:
        assert w in err
    assert sorted(os.listdir(tmp_path / "gen")) == before


def test_hints_relative_to_the_sidecar_and_a_moved_folder(tmp_path, run_cli, monkeypatch):
    make_outputs(tmp_path / "run" / "gen", tmp_path / "run" / "hints")
    monkeypatch.chdir(tmp_path)  # a working folder unrelated to the sidecars
    code, out, err = run_cli("eval", "run/gen")
    assert code == 0, err
    res = json.loads((tmp_path / "run/gen/eval.json").read_text())
    assert res["n"] == 3 and res["f1"] > 0.9 and res["skipped"] == {}
    assert res["rows"][0]["hint"] == os.path.join("..", "hints", "hint_0.png")  # relative to eval.json
    assert res["rows"][0]["image"] == "out_0.png"
    shutil.move(tmp_path / "run", tmp_path / "moved")  # outputs and hints move together
    monkeypatch.chdir(tmp_path / "moved" / "hints")
    code, out, err = run_cli("eval", "../gen", "--overwrite")
    assert code == 0, err
    res = json.loads((tmp_path / "moved/gen/eval.json").read_text())
    assert res["n"] == 3 and (tmp_path / "moved/gen" / res["rows"][0]["hint"]).is_file()


def test_old_sidecars_relative_to_the_working_folder(tmp_path, run_cli, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_outputs(tmp_path / "gen", tmp_path / "hints", hint_ref="cwd")  # "hints/hint_0.png"
    code, out, err = run_cli("eval", "gen", "-o", "out/eval.json")
    assert code == 0, err
    res = json.loads((tmp_path / "out/eval.json").read_text())
    assert res["n"] == 3 and res["rows"][0]["hint"] == os.path.join("..", "hints", "hint_0.png")


def test_broken_sidecars_are_skipped_and_counted(tmp_path, run_cli):
    gen = make_outputs(tmp_path / "gen", n=2)
    bad = {"list": "[1, 2]", "broken": '{"hint": ', "nan": '{"hint": "hint_0.png", "seed": NaN}',
           "missing": '{"hint": "nowhere.png"}', "numbers": '{"hint": 7}', "text2img": '{"prompt": "x"}'}
    for name, text in bad.items():
        shutil.copy(gen / "out_0.png", gen / f"{name}.png")
        (gen / f"{name}.json").write_text(text)
    (gen / "garbage.png").write_bytes(b"<html>not a png</html>")
    (gen / "garbage.json").write_text('{"hint": "hint_0.png"}')
    code, out, err = run_cli("eval", str(gen))
    assert code == 0, err
    res = json.loads((gen / "eval.json").read_text())
    assert res["n"] == 2 and res["f1"] > 0.9
    assert res["skipped"] == {"not a JSON object": 1, "broken JSON": 1, "NaN or infinity in JSON": 1,
                              "hint not found": 1, "bad \"hint\"": 1, "names no hint": 1, "unreadable image": 1}
    assert {s["file"] for s in res["skipped_files"]} == {f"{n}.json" for n in [*bad, "garbage"]}
    assert "skipped" in err and "Traceback" not in out + err


def test_nothing_evaluable_is_one_line(tmp_path, run_cli):
    gen = tmp_path / "gen"
    gen.mkdir()
    save_png(gen / "a.png", draw_circle(circles(1, 64, 0)[0], 64))
    (gen / "a.json").write_text("[]")
    code, out, err = run_cli("eval", str(gen))
    assert code == 1 and one_error_line(err) and "not a JSON object" in err
    assert sorted(os.listdir(gen)) == ["a.json", "a.png"]


@pytest.mark.parametrize("where", ["is_dir", "under_file"])
def test_unwritable_outputs_refused_before_work(tmp_path, run_cli, where):
    make_outputs(tmp_path / "gen", n=1)
    (tmp_path / "file").write_text("keep")
    target = {"is_dir": tmp_path / "gen", "under_file": tmp_path / "file" / "e.json"}[where]
    code, out, err = run_cli("eval", str(tmp_path / "gen"), "-o", str(target))
    assert code == 1 and one_error_line(err) and "--output" in err and "Traceback" not in out + err
    assert (tmp_path / "file").read_text() == "keep" and not (tmp_path / "gen" / "eval.json").exists()


def test_a_killed_earlier_eval_leaves_no_temp(tmp_path, run_cli):
    gen = make_outputs(tmp_path / "gen", n=1)
    stale = gen / ".eval.json.999999999-abcd.tmp"  # the temp of an eval killed while writing (pid gone)
    stale.write_text("{")
    code, out, err = run_cli("eval", str(gen))
    assert code == 0, err
    assert not stale.exists() and json.loads((gen / "eval.json").read_text())["n"] == 1


def test_an_earlier_results_file_is_not_overwritten_silently(tmp_path, run_cli, monkeypatch):
    """#23.8: a second eval refuses to replace eval.json unless --overwrite; cnet.toml's [eval] still applies."""
    monkeypatch.chdir(tmp_path)
    make_outputs(tmp_path / "gen", tmp_path / "hints")
    assert run_cli("eval", "gen")[0] == 0
    before = (tmp_path / "gen/eval.json").read_text()
    code, out, err = run_cli("eval", "gen")
    assert code == 1 and "--overwrite" in err and (tmp_path / "gen/eval.json").read_text() == before
    assert run_cli("eval", "gen", "--overwrite")[0] == 0
    (tmp_path / "cnet.toml").write_text("[eval]\ntolerance = 99\n")  # reaches the option as its default
    code, out, err = run_cli("eval", "gen", "--overwrite")
    assert code == 2 and "--tolerance" in err
