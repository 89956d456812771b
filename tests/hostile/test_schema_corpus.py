"""The concrete cases of issue #24 (and #23.6) that reached a traceback, a hang or a silent wrong answer, kept as
files in tests/hostile/schema/<reader>/ and driven through the real readers and CLI entry points. Every
case ends in one `error:` line (a `CnetError`), except the `ok_*` files, which must read cleanly."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from schema_cases import CORPUS, assert_one_error_line, fake_checkpoint, png_with_text

from cnetcli.errors import CnetError


def cases(reader: str) -> list[Path]:
    return sorted((CORPUS / reader).iterdir())


def _ids(paths: list[Path]) -> list[str]:
    return [p.stem for p in paths]


# ------------------------------------------------------------------------------------------ generate --from
@pytest.mark.parametrize("case", cases("infotext"), ids=_ids(cases("infotext")))
def test_a1111_parameters(case, tmp_path, run_cli):
    from cnetcli.generation import GenerateConfig, settings_from_png

    text = case.read_text(encoding="utf-8")
    png = png_with_text(tmp_path / "a1111.png", {"parameters": text})
    if case.stem.startswith("ok_"):
        kw = settings_from_png(png)
        GenerateConfig(**kw, hints=("hint.png",))
        if "unipc" in case.stem:
            assert (kw["sampler"], kw["scheduler"]) == ("unipc", "karras")
        if "4.0" in case.stem:
            assert kw["steps"] == 4
        return
    line = assert_one_error_line(*run_cli("generate", "--from", str(png), "-o", str(tmp_path / "out")))
    assert "a1111.png" in line
    assert not (tmp_path / "out").exists()


def test_units_that_disagree_name_the_unit_and_a_flag_chooses(tmp_path):
    from cnetcli.errors import SchemaError
    from cnetcli.generation import settings_from_png

    png = png_with_text(tmp_path / "a.png", {"parameters": (CORPUS / "infotext/units_control_modes_differ.txt").read_text()})
    with pytest.raises(SchemaError, match=r"ControlNet 1: Control Mode 'My prompt is more important' differs .*--control-mode"):
        settings_from_png(png)
    assert "control_mode" not in settings_from_png(png, given={"control_mode"})
    png = png_with_text(tmp_path / "b.png", {"parameters": (CORPUS / "infotext/sampler_cnet_lacks.txt").read_text()})
    with pytest.raises(CnetError, match="LCM.*--sampler"):
        settings_from_png(png)
    assert "sampler" not in settings_from_png(png, given={"sampler"})


def test_units_whose_resize_modes_disagree_name_the_unit_and_a_flag_chooses():
    """#23.6: every unit's resize mode was read from unit 0, silently."""
    from cnetcli.errors import SchemaError
    from cnetcli.generation.infotext import config_from_parameters

    text = (CORPUS / "infotext/units_control_modes_differ.txt").read_text().replace(
        "My prompt is more important", "Balanced")
    second = text.rindex("Resize Mode: Crop and Resize")
    text = text[:second] + text[second:].replace("Crop and Resize", "Just Resize", 1)
    with pytest.raises(SchemaError, match=r"ControlNet 1: Resize Mode 'Just Resize' differs .*--resize-mode"):
        config_from_parameters(text)
    kw = config_from_parameters(text, given={"resize_mode"})
    assert "resize_mode" not in kw and kw["control_mode"] == "balanced"


def test_each_unit_keeps_its_own_mode_when_they_agree(tmp_path):
    from cnetcli.generation.infotext import config_from_parameters

    text = (CORPUS / "infotext/units_control_modes_differ.txt").read_text().replace(
        "My prompt is more important", "ControlNet is more important").replace("Balanced", "ControlNet is more important")
    kw = config_from_parameters(text)
    assert kw["control_mode"] == "controlnet" and kw["scales"] == (1.0, 1.0)


def test_the_parameters_parse_is_linear():
    """40k characters took 17.8 s (a quadratic regex scan); a 200 KB chunk did not finish."""
    from cnetcli.errors import SchemaError
    from cnetcli.generation.infotext import MAX_INFOTEXT, parse_parameters

    for text in ("x" * 40_000 + "\nSteps: 2, Sampler: Euler, Seed: 1", "word " * 40_000, " " * 200_000 + "-x:",
                 "a, " * 60_000, 'K: "' + '\\"' * 60_000):
        t = time.perf_counter()
        parse_parameters(text)
        assert time.perf_counter() - t < 1.0, text[:20]
    with pytest.raises(SchemaError, match="more than"):
        parse_parameters("x" * (MAX_INFOTEXT + 1))


@pytest.mark.parametrize("case", cases("cnet_record"), ids=_ids(cases("cnet_record")))
def test_cnet_generation_records(case, tmp_path, run_cli):
    raw = case.read_bytes()
    try:  # as the PNG's own `cnet` chunk, when the bytes are text
        png = png_with_text(tmp_path / "chunk.png", {"cnet": raw.decode("utf-8")})
        assert_one_error_line(*run_cli("generate", "--from", str(png), "-o", str(tmp_path / "out")))
    except UnicodeDecodeError:
        pass
    png = png_with_text(tmp_path / "side.png", {})  # and as its JSON sidecar
    (tmp_path / "side.json").write_bytes(raw)
    line = assert_one_error_line(*run_cli("generate", "--from", str(png), "-o", str(tmp_path / "out")))
    assert "side" in line
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------- checkpoints
@pytest.mark.parametrize("case", cases("manifest") + cases("state"),
                         ids=[f"{p.parent.name}-{p.stem}" for p in cases("manifest") + cases("state")])
def test_damaged_checkpoints_are_listed_and_skipped(case, tmp_path, run_cli):
    from cnetcli.errors import UsageError
    from cnetcli.training.checkpoint import resolve_resume

    out = tmp_path / "run"
    if case.parent.name == "manifest":
        extra = {"optimizer.safetensors": b"garbage, not safetensors"} if case.stem == "files_empty" else {}
        fake_checkpoint(out, 2, manifest=case.read_text(), files=extra)
    else:
        fake_checkpoint(out, 2, files={"state.json": case.read_bytes()})
    code, so, err = run_cli("runs", str(out))
    assert code == 0 and "Traceback" not in so + err, err
    assert "DAMAGED" in so and "last valid checkpoint: none" in so, so
    with pytest.raises(UsageError, match="no valid checkpoint"):
        resolve_resume("latest", out, warn=lambda m: None)


@pytest.mark.parametrize("case", ["manifest/files_empty.json", "state/is_a_list.json"])
def test_resume_latest_on_a_damaged_checkpoint_is_one_error_line(case, tmp_path, run_cli, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    good = fake_checkpoint(out, 1)
    if case.startswith("manifest"):
        fake_checkpoint(out, 2, manifest=(CORPUS / case).read_text(), files={"optimizer.safetensors": b"garbage"})
    else:
        fake_checkpoint(out, 2, files={"state.json": (CORPUS / case).read_bytes()})
    code, so, err = run_cli("train", "--output", str(out), "--resume", "latest")
    assert f"skippingcheckpoint{out}/checkpoints/step-2" in "".join(err.split())  # the damaged newest, said so
    assert_one_error_line(code, so, err)  # then step-1 is taken; this folder has no dataset: one line
    assert good.is_dir()


def test_a_manifest_names_no_file_outside_the_checkpoint(tmp_path, monkeypatch):
    """`../../../etc/hostname` is refused by the schema: never opened, never hashed."""
    import builtins

    from cnetcli.training.checkpoint import verify

    ck = fake_checkpoint(tmp_path / "run", 2, manifest=(CORPUS / "manifest/escapes_the_folder.json").read_text())
    opened: list[str] = []
    real_open = builtins.open
    monkeypatch.setattr(builtins, "open", lambda f, *a, **k: opened.append(str(f)) or real_open(f, *a, **k))
    why = verify(ck)
    assert why and "inside the checkpoint" in why
    assert not any("hostname" in f for f in opened)


def test_a_file_the_manifest_does_not_list_damages_the_checkpoint(tmp_path):
    from cnetcli.training.checkpoint import verify

    ck = fake_checkpoint(tmp_path / "run", 2)
    assert verify(ck) is None
    (ck / "extra.bin").write_bytes(b"x")
    assert "extra.bin is not listed" in verify(ck)
    (ck / "extra.bin").unlink()
    (ck / "link").symlink_to("/etc/hostname")
    assert "link is a link" in verify(ck)


# ------------------------------------------------------------------------------------- configs and env
@pytest.mark.parametrize("case", cases("controlnet_config"), ids=_ids(cases("controlnet_config")))
def test_controlnet_configs(case, tmp_path):
    from cnetcli.errors import ModelLoadError
    from cnetcli.models.controlnet import controlnet_config

    (tmp_path / "cn").mkdir()
    (tmp_path / "cn" / "config.json").write_bytes(case.read_bytes())
    (tmp_path / "cn" / "diffusion_pytorch_model.safetensors").write_bytes(b"")
    with pytest.raises(ModelLoadError, match="config.json"):
        controlnet_config(str(tmp_path / "cn"))


@pytest.mark.parametrize("case", cases("toml"), ids=_ids(cases("toml")))
def test_project_config(case, tmp_path):
    from cnetcli.errors import UsageError
    from cnetcli.project_config import load_project_config

    (tmp_path / "cnet.toml").write_bytes(case.read_bytes())
    with pytest.raises(UsageError, match="cnet.toml: nested"):
        load_project_config(tmp_path)


def test_a_cnet_toml_symlink_loop_is_an_error_not_ignored(tmp_path):
    from cnetcli.errors import UsageError
    from cnetcli.project_config import load_project_config

    (tmp_path / "cnet.toml").symlink_to(tmp_path / "cnet.toml")
    with pytest.raises(UsageError, match="broken symlink"):
        load_project_config(tmp_path)


@pytest.mark.parametrize("case", cases("env"), ids=_ids(cases("env")))
def test_launcher_variables(case, monkeypatch):
    from cnetcli.device import local_world_size, process_rank_world
    from cnetcli.errors import UsageError

    for var in ("RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    for item in case.read_text().split():
        k, v = item.split("=", 1)
        monkeypatch.setenv(k, v)
    with pytest.raises(UsageError, match="RANK|WORLD_SIZE"):
        process_rank_world()
        local_world_size()


def test_the_corpus_holds_the_issue_cases():
    names = {f"{p.parent.name}/{p.stem}" for p in CORPUS.rglob("*") if p.is_file()}
    for want in ("cnet_record/seed_abc", "cnet_record/seed_7x", "cnet_record/seed_list", "cnet_record/seed_1e400",
                 "cnet_record/scale_strong", "cnet_record/scale_missing", "infotext/steps_20abc",
                 "infotext/eta_lots", "infotext/weight_strong", "infotext/unit_item_without_colon",
                 "infotext/unit_item_with_two_colons", "manifest/files_are_strings", "manifest/step_ten",
                 "manifest/written_at_list", "manifest/files_empty", "manifest/escapes_the_folder", "state/is_a_list",
                 "controlnet_config/unet_class", "controlnet_config/norm_eps_nan", "env/world_size_1e23"):
        assert want in names
    assert json.loads((CORPUS / "cnet_record/seed_abc.json").read_text())["seed"] == "abc"


def test_a_flag_overrides_what_the_png_says_cnet_lacks(tmp_path, run_cli):
    """#23.6: `--from 1girl.png --sampler dpmpp_2m` failed with "sampler 'LCM' has no cnet counterpart"."""
    png = png_with_text(tmp_path / "lcm.png", {"parameters": (CORPUS / "infotext/sampler_cnet_lacks.txt").read_text()})
    line = assert_one_error_line(*run_cli("generate", "--from", str(png), "-o", str(tmp_path / "out")))
    assert "LCM" in line
    line = assert_one_error_line(*run_cli("generate", "--from", str(png), "--sampler", "dpmpp_2m", "--hint",
                                          str(tmp_path / "missing.png"), "-o", str(tmp_path / "out")))
    assert "LCM" not in line and "missing.png" in line


# ------------------------------------------------------------------------------------------- dataset rows
def _pairs(root: Path, n: int) -> None:
    for sub in ("images", "conditioning_images"):
        (root / sub).mkdir(parents=True)
        for i in range(n):
            png_with_text(root / sub / f"{i}.png", {})


def test_a_csv_row_over_the_field_limit_skips_that_row_only(tmp_path):
    """A `metadata.csv` caption over 131072 characters dropped every later row, uncounted."""
    from cnetcli.data import read_dataset

    _pairs(tmp_path, 4)
    rows = ["file_name,conditioning_image_file_name,text"] + [
        f"images/{i}.png,conditioning_images/{i}.png,{'x' * 200_000 if i == 1 else f'cap {i}'}" for i in range(4)]
    (tmp_path / "metadata.csv").write_text("\n".join(rows) + "\n")
    idx = read_dataset(str(tmp_path))
    assert [r.text for r in idx.rows] == ["cap 0", "cap 2", "cap 3"]
    assert idx.skip_counts == {"bad CSV": 1} and idx.skip_examples[0].startswith("metadata.csv:3: field larger")


def test_a_parquet_caption_that_is_not_utf8_skips_and_counts_the_row(tmp_path):
    """It ended in pyarrow's `ArrowInvalid: Invalid UTF8 sequence`."""
    import datasets
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    from cnetcli.data import read_dataset

    ims = [Image.fromarray(np.zeros((8, 8, 3), np.uint8))] * 3
    feats = datasets.Features(image=datasets.Image(), conditioning_image=datasets.Image(), text=datasets.Value("string"))
    datasets.Dataset.from_dict({"image": ims, "conditioning_image": ims, "text": ["a", "b", "c"]},
                               features=feats).to_parquet(str(tmp_path / "good.parquet"))
    table = pq.read_table(tmp_path / "good.parquet")
    bad = pa.array([b"ok", b"caf\xff", b"fine"], pa.binary()).view(pa.string())  # parquet does not check UTF-8
    pq.write_table(table.set_column(2, "text", bad), tmp_path / "d.parquet")
    idx = read_dataset(str(tmp_path / "d.parquet"))
    assert [r.text for r in idx.rows] == ["ok", "fine"]
    assert idx.skip_counts == {"bad caption": 1} and idx.skip_examples == ["text[1]: not UTF-8 text"]


@pytest.mark.parametrize("sampler, scheduler", [("unipc", "karras"), ("unipc", "normal"), ("ddim", "normal"),
                                                ("dpmpp_2m", "karras"), ("euler", "exponential")])
def test_the_schedule_cnet_writes_reads_back(sampler, scheduler):
    """#23.6: `unipc` with karras was written as `Automatic` and read back as `unipc normal`."""
    from cnetcli.generation.infotext import a1111_parameters, config_from_parameters

    text = a1111_parameters({"sampler": sampler, "scheduler": scheduler, "steps": 4, "cfg": 7.0, "seed": 1,
                             "width": 64, "height": 64, "base": "cnet-tiny", "prompt": "a cat"})
    kw = config_from_parameters(text)
    assert (kw["sampler"], kw["scheduler"]) == (sampler, scheduler), text


def test_a_fifo_as_from_is_refused_not_read(tmp_path):
    import os

    from cnetcli.errors import SchemaError
    from cnetcli.generation import settings_from_png

    os.mkfifo(tmp_path / "f.png")
    with pytest.raises(SchemaError, match="not a regular file"):
        settings_from_png(tmp_path / "f.png")


def test_runs_lists_log_lines_it_cannot_read(tmp_path, run_cli):
    out = tmp_path / "run"
    fake_checkpoint(out, 2)
    (out / "runs.jsonl").write_text('{"event": "start", "step": 0, "time": "t"}\n' + "[" * 5000 + "\n"
                                    + '{"event": "resume", "changes": {"lr": 1}}\n')
    code, so, err = run_cli("runs", str(out))
    assert code == 0 and "Traceback" not in so + err
    assert "1 phase(s), 1 start/resume event(s)" in so and "step       2  ok" in so
    assert "skipped 2 unreadable record(s)" in err and "runs.jsonl:2" in err and "runs.jsonl:3" in err
