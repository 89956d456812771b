"""Issue #24.3: an output folder is owned by one run at a time (OUTPUT/.cnet-run.lock names the holder); a run
never silently overwrites another's outputs; a lock path that is a folder is one error line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from cnetcli.errors import OutputError
from cnetcli.folderlock import RUN_LOCK, hold


@pytest.fixture
def held(tmp_path):
    """Another process holding tmp_path/out as a training run would."""
    out = tmp_path / "out"
    code = textwrap.dedent(f"""
        import sys, time
        sys.argv = ["cnet", "train", "--seed", "1"]
        from cnetcli.folderlock import hold
        with hold({str(out)!r}, flag="--output", what="a training run"):
            print("ready", flush=True)
            sys.stdin.read()
    """)
    p = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                         env=os.environ | {"PYTHONPATH": os.pathsep.join(sys.path)})
    assert p.stdout.readline().strip() == "ready"
    yield out, p
    if p.poll() is None:
        p.stdin.close()
        p.wait(timeout=30)


def test_second_train_into_a_held_output_is_refused_naming_the_holder(held, run_cli, tmp_path):
    out, proc = held
    pid = proc.pid
    code, stdout, err = run_cli("train", "--base", "cnet-tiny", "--data", str(tmp_path / "nodata"), "-o", str(out),
                                "--seed", "2")
    lines = [x for x in err.splitlines() if x.startswith("error:")]
    assert code == 2 and len(lines) == 1, err
    assert f"in use by a training run, pid {pid}" in lines[0] and "cnet train --seed 1" in lines[0]
    assert sorted(p.name for p in out.iterdir()) == [RUN_LOCK]  # nothing of the holder's touched


def test_a_dead_holders_lock_is_taken_over_with_a_warning(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    note = {"pid": int(dead.stdout), "host": "h", "started": "then", "command": "cnet train --seed 1"}
    (out / RUN_LOCK).write_text(json.dumps(note))  # a run killed with -9: its note stays, its flock is gone
    warnings: list[str] = []
    with hold(out, flag="--output", warn=warnings.append):
        assert json.loads((out / RUN_LOCK).read_text())["pid"] == os.getpid()
    assert len(warnings) == 1 and f"took over the lock of pid {dead.stdout.strip()}" in warnings[0]
    assert (out / RUN_LOCK).read_text() == ""  # released: no note left behind


def test_a_lock_that_is_a_folder_is_one_line(tmp_path, run_cli):
    out = tmp_path / "out"
    (out / RUN_LOCK).mkdir(parents=True)
    with pytest.raises(OutputError, match="lock file .cnet-run.lock is not a regular file"):
        with hold(out, flag="--output"):
            pass
    ds = tmp_path / "ds"
    (ds / ".cnet-index.lock").mkdir(parents=True)
    src = tmp_path / "in"
    src.mkdir()
    from hostile_inputs import good_image

    good_image(src / "a.png")
    code, stdout, err = run_cli("annotate", str(src), "--dataset", str(ds), "-j", "1", "--type", "canny")
    lines = [x for x in err.splitlines() if x.startswith("error:")]
    assert code == 1 and len(lines) == 1 and ".cnet-index.lock is not a regular file" in lines[0], err
    assert "Traceback" not in err
    assert not (ds / "images").exists()  # checked before any pair was written


def test_a_finished_run_is_not_overwritten_by_a_new_one(run_cli, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "controlnet").mkdir()  # a finished run (seed 1)
    (out / "train_config.json").write_text('{"seed": 1}')
    code, stdout, err = run_cli("train", "--base", "cnet-tiny", "--data", str(tmp_path), "-o", str(out),
                                "--seed", "2", "--device", "cpu")
    assert code == 2 and "already holds a training run" in err, err
    assert (out / "train_config.json").read_text() == '{"seed": 1}'


def _inputs(tmp_path):
    from hostile_inputs import good_image, html_named_png

    src = tmp_path / "in"
    src.mkdir()
    good_image(src / "a.png")
    good_image(src / "b.png", seed=1)
    html_named_png(src / "c.png")
    return src


def test_annotate_dataset_refuses_an_unreadable_index_before_writing_pairs(tmp_path, run_cli):
    src, ds = _inputs(tmp_path), tmp_path / "ds"
    ds.mkdir()
    (ds / "metadata.jsonl").write_text('{"file_name": "images/x.png"}\n{not json\n')
    code, stdout, err = run_cli("annotate", str(src), "--dataset", str(ds), "-j", "1", "--type", "canny")
    assert code == 1 and "metadata.jsonl:2" in err and "Traceback" not in err, err
    assert sorted(p.name for p in ds.iterdir()) == [".cnet-index.lock", "metadata.jsonl"]


def test_annotate_dataset_index_failure_removes_its_pairs_and_lists_failures(tmp_path, run_cli, monkeypatch):
    from cnetcli.data.write import DatasetWriter

    def full_disk(self, records):
        raise OutputError(f"{self.index}: cannot write (No space left on device)")

    monkeypatch.setattr(DatasetWriter, "add_records", full_disk)
    src, ds = _inputs(tmp_path), tmp_path / "ds"
    code, stdout, err = run_cli("annotate", str(src), "--dataset", str(ds), "-j", "1", "--type", "canny")
    assert code == 1 and "No space left" in err and "removed the 4 file(s)" in err, err
    assert "failed:" in err and "c.png" in err  # the per-image failure is reported too
    assert not [p for p in ds.rglob("*.png")]  # no orphan pairs


def test_a_run_killed_with_sigkill_leaves_a_lock_the_next_run_takes_over(held):
    out, proc = held
    proc.kill()  # SIGKILL: the holder dies without releasing; the kernel drops its flock, its note stays
    proc.wait(timeout=30)
    warnings: list[str] = []
    with hold(out, flag="--output", what="a training run", warn=warnings.append):
        pass
    assert len(warnings) == 1 and f"pid {proc.pid}" in warnings[0] and "no longer running" in warnings[0]
