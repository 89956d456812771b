"""Issue #24.3: Ctrl-C in train and annotate always prints one line saying what was kept (typer turns a
KeyboardInterrupt into a silent exit 130 before cnet's error boundary sees it)."""

from __future__ import annotations

import hostile_inputs as H


def test_annotate_interrupted_says_what_was_kept(run_cli, tmp_path, monkeypatch):
    from cnetcli.annotation import run as annotation_run

    src = tmp_path / "in"
    src.mkdir()
    for i in range(3):
        H.good_image(src / f"{i}.png", seed=i)
    real = annotation_run._process
    calls = []

    def process(ctx, job):
        if calls:
            raise KeyboardInterrupt
        calls.append(job)
        return real(ctx, job)

    monkeypatch.setattr(annotation_run, "_process", process)
    code, out, err = run_cli("annotate", str(src), "-o", str(tmp_path / "out"), "-j", "1", "--type", "canny")
    lines = [x for x in err.splitlines() if x.startswith("error:")]
    assert code == 130 and len(lines) == 1, err
    assert "interrupted: kept 1 hint(s) in" in lines[0] and "--skip-existing" in lines[0]


def test_train_interrupted_before_its_loop_says_nothing_was_kept(run_cli, tmp_path, monkeypatch):
    from cnetcli.training import loop

    def ctrl_c(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "_train", ctrl_c)
    code, out, err = run_cli("train", "--base", "cnet-tiny", "--data", str(tmp_path), "-o", str(tmp_path / "o"),
                             "--device", "cpu")
    assert code == 130 and "error: interrupted: no checkpoint was written in" in err, err
    (tmp_path / "o" / "checkpoints" / "step-20").mkdir(parents=True)
    code, out, err = run_cli("train", "--base", "cnet-tiny", "--data", str(tmp_path), "-o", str(tmp_path / "o"),
                             "--device", "cpu", "--overwrite")
    assert code == 130 and "last checkpoint" in err and "step 20" in err and "--resume latest" in err, err


def test_ctrl_c_while_loading_still_prints_a_line(run_cli, tmp_path, monkeypatch):
    """A KeyboardInterrupt before training starts (imports, config, model loading) is not swallowed by typer."""
    from cnetcli.training import inputs

    def ctrl_c(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(inputs, "check_inputs", ctrl_c)
    code, out, err = run_cli("train", "-o", str(tmp_path / "o"))
    assert code == 130 and "error: interrupted: no checkpoint was written in" in err, err
    from cnetcli.annotation import run as annotation_run

    monkeypatch.setattr(annotation_run, "plan", ctrl_c)
    H.good_image(tmp_path / "a.png")
    code, out, err = run_cli("annotate", str(tmp_path / "a.png"), "-o", str(tmp_path / "h"), "--type", "canny")
    assert code == 130 and "error: interrupted before any hint was written" in err, err
