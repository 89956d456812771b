"""benchmarks/gpu.sh's table assembly and worker environment (no timing assertions; one slow test runs the
zero2 step's workers at toy size on the CPU)."""

import importlib.util
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _gpu():
    spec = importlib.util.spec_from_file_location("cnet_bench_gpu", ROOT / "benchmarks" / "gpu.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# what the three workers write in toy mode (shapes of benchmarks/{generate,train,annotate_models}.py --json)
TOY = {
    "generate": {"data": {"device": "x86_64", "rows": [
        {"batch": 1, "path": "default", "img_per_s": 2.0}, {"batch": 1, "path": "eager", "img_per_s": 2.0},
        {"batch": 1, "path": "diffusers", "img_per_s": 1.0}, {"batch": 8, "path": "default", "img_per_s": 8.0},
        {"batch": 8, "path": "eager", "img_per_s": 4.0}, {"batch": 8, "path": "diffusers", "img_per_s": 4.0}]},
        "seconds": 9.0, "error": None},
    "train": {"data": {"batch": 8, "rows": {"diffusers": {"samples_per_s": 10.0, "peak_mib": 2048.0},
                                "cnet": {"samples_per_s": 25.0, "peak_mib": 1024.0},
                                "cnet --no-cache-latents": {"samples_per_s": 10.0, "peak_mib": 2048.0},
                                "cnet --small-scale": {"samples_per_s": 30.0, "peak_mib": 1024.0}}},
              "seconds": 20.0, "error": None},
    "annotate": {"data": None, "seconds": 3.0, "error": "exit 1; log: a.log (last line: boom)"},
}


def test_table_puts_each_path_next_to_its_baseline():
    gpu = _gpu()
    env = {"device": "NVIDIA H200", "cuda": "12.8", "python": "3.12", "torch": "2.11", "diffusers": "0.42.1",
           "transformers": "5.0", "accelerate": "1.0", "controlnet_aux": "0.0.10", "cnetcli": "0.1.0"}
    table = gpu.build_table(TOY, env, toy=False)
    assert table.splitlines()[0].startswith("device: NVIDIA H200; CUDA 12.8") and "diffusers 0.42.1" in table
    rows = {r.split(" | ")[0].strip("| "): r for r in table.splitlines() if r.startswith("| ") and " | " in r}
    assert "0.500 s/img (2.00x)" in rows["generate, batch 1, default"]
    assert "0.81 s/img" in rows["generate, batch 1, default"] and "<= 0.20 s/img" in rows["generate, batch 1, default"]
    assert "8.00 img/s (2.00x)" in rows["generate, batch 8, default"] and "4.3 img/s" in rows["generate, batch 8, eager"]
    assert "25.0 samples/s, 1.0 GiB (2.50x)" in rows["train step, batch 8, default flags"]
    assert "10.0 samples/s, 2.0 GiB" in rows["train step, batch 8, default flags"]  # diffusers' step, this run
    assert "23.4 samples/s, 15.2 GiB" in rows["train step, batch 8, `--no-cache-latents`"]
    assert "(3.00x)" in rows["train step, batch 8, `--small-scale`"]
    # a failed step shows as '-' with its reason, the rest of the table still stands
    assert rows["depth annotate"].split(" | ")[1] == "-" and "30.9 img/s" in rows["depth annotate"]
    assert "annotate: exit 1" in table and "TOY RUN" not in table
    assert "TOY RUN" in gpu.build_table(TOY, env, toy=True)


def test_toy_and_full_runs_use_the_same_scripts(tmp_path):
    gpu = _gpu()
    toy, full = gpu.steps(True, tmp_path), gpu.steps(False, tmp_path)
    assert [(n, a[0]) for n, a, _ in toy] == [(n, a[0]) for n, a, _ in full]
    sd15 = [(n, a, limit) for n, a, limit in full if n not in gpu.LATE_STEPS and n not in gpu.FLOW_STEPS]
    assert sum(limit for *_, limit in sd15) <= 8 * 60  # the SD1.5 rows fit issue #15's 8 minutes
    assert gpu.TOTAL_LIMIT_S <= 9 * 60  # and the later rows share what is left of 9 (they run last)
    # (the FLUX.1 / SD3.5 rows come after them and run only when --only names them)
    assert [n for n, *_ in full][-5:] == ["sdxl-train", "sdxl-generate", "zero2", *gpu.FLOW_STEPS]
    assert list(gpu.LATE_STEPS) == ["sdxl-train", "sdxl-generate", "zero2"]
    assert all("--sd15" in a or "sd15" in a or n == "annotate" for n, a, _ in sd15)
    assert all("cuda" in a for _, a, _ in full) and all("cpu" in a for _, a, _ in toy)


def test_workers_keep_the_callers_pythonpath(monkeypatch):
    gpu = _gpu()
    monkeypatch.setenv("PYTHONPATH", "/somewhere/else")
    pp = gpu.child_env()["PYTHONPATH"].split(os.pathsep)
    assert pp == [str(ROOT), "/somewhere/else"]
    # and benchmarks/train.py's own worker launch keeps it too (it used to replace it)
    spec = importlib.util.spec_from_file_location("cnet_bench_train", ROOT / "benchmarks" / "train.py")
    train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train)
    assert train.worker_env()["PYTHONPATH"].split(os.pathsep) == [str(ROOT), "/somewhere/else"]


def test_gpu_sh_refuses_without_cuda_and_points_to_toy(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: gpu.sh would run for real")
    r = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu.sh"), "--out", str(tmp_path)], capture_output=True,
                       text=True, env=os.environ | {"PYTHON": os.environ.get("PYTHON", __import__("sys").executable),
                                                    "CNET_BENCH_TOY": "0"}, timeout=120)
    assert r.returncode != 0 and "--toy" in r.stderr


def test_table_has_the_sdxl_rows(monkeypatch):
    """Issue #12 item 7: SDXL train step per batch (cnet with the memory flags vs diffusers' SDXL step) and
    SDXL generate (default vs eager), from the JSON that benchmarks/train.py and generate.py write."""
    gpu = _gpu()
    monkeypatch.setattr(gpu, "has_bitsandbytes", lambda: False)
    ref, ours = gpu.sdxl_train_variants(toy=False)
    assert ref == "diffusers --gradient-checkpointing" and ours == "cnet --gradient-checkpointing --cache-latents"
    monkeypatch.setattr(gpu, "has_bitsandbytes", lambda: True)
    ref, ours = gpu.sdxl_train_variants(toy=False)
    assert "--use-8bit-adam" in ref and "--use-8bit-adam" in ours
    assert not any("--use-8bit-adam" in v for v in gpu.sdxl_train_variants(toy=True))
    full = {n: a for n, a, _ in gpu.steps(False, Path("/tmp/x"))}
    assert full["sdxl-train"][full["sdxl-train"].index("--batch") + 1:][:2] == ["1", "4"]
    assert "sdxl" in full["sdxl-train"] and "sdxl" in full["sdxl-generate"]
    xl = dict(TOY)
    xl["sdxl-train"] = {"data": {"res": 1024, "batches": [1, 4], "by_batch": {
        "1": {ref: {"samples_per_s": 2.0, "peak_mib": 20480.0}, ours: {"samples_per_s": 3.0, "peak_mib": 10240.0}}}},
        "seconds": 200.0, "error": "timed out after 200 s; log: t.log (last line: -)"}
    xl["sdxl-generate"] = {"data": {"size": 1024, "steps": 20, "rows": [
        {"batch": 1, "path": "default", "img_per_s": 0.5}, {"batch": 1, "path": "eager", "img_per_s": 0.25}]},
        "seconds": 100.0, "error": None}
    table = gpu.build_table(xl, {"device": "NVIDIA H200"}, toy=False)
    rows = {r.split(" | ")[0].strip("| "): r for r in table.splitlines() if r.startswith("| ") and " | " in r}
    b1 = rows["SDXL train step, 1024 px, batch 1, grad. checkpointing + 8-bit Adam + cached latents"]
    assert "3.0 samples/s, 10.0 GiB (1.50x)" in b1 and "2.0 samples/s, 20.0 GiB (train_controlnet_sdxl.py" in b1
    # batch 4 did not fit its time limit: the row stays, with '-', and the reason is listed
    b4 = rows["SDXL train step, 1024 px, batch 4, grad. checkpointing + 8-bit Adam + cached latents"]
    assert b4.split(" | ")[1] == "-" and "sdxl-train: timed out after 200 s" in table
    assert "2.000 s/img (2.00x eager)" in rows["SDXL generate, 1024 px, 20 steps, batch 1, default"]
    assert "4.000 s/img" in rows["SDXL generate, 1024 px, 20 steps, batch 1, eager"]
    # and without any SDXL results the rows are still there, empty
    empty = gpu.build_table(TOY, {"device": "x"}, toy=True)
    assert empty.count("| SDXL train step, 1024 px, batch") == 2 and "| SDXL generate, 1024 px" in empty


def test_table_has_the_flux_and_sd3_rows():
    """Issue #19: `--only flux|sd3` rows (benchmarks/train_flow.py's JSON): the train step per resolution with the
    memory flags, its measured peak next to the memory plan's estimate; the full run builds FLUX.1-dev / SD3.5-large
    at 512 and 1024 px on the GPU, the toy run the tiny bases on the CPU."""
    gpu = _gpu()
    full = {n: a for n, a, _ in gpu.steps(False, Path("/tmp/x"))}
    assert full["flux-train"][:3] == ["train_flow.py", "--family", "flux"] and "--toy" not in full["flux-train"]
    assert full["sd3-train"][full["sd3-train"].index("--res") + 1:][:2] == ["512", "1024"]
    res = dict(TOY)
    res["flux-train"] = {"data": {"rows": [{"res": 512, "batch": 1, "s_per_step": 1.25, "peak_gib": 40.0,
                                            "plan_gib": 42.0, "plan_with_overheads_gib": 47.2,
                                            "optimizer": "AdamW 8-bit"}]}, "seconds": 90.0, "error": None}
    res["sd3-train"] = {"data": None, "seconds": 240.0, "error": "timed out after 240 s; log: s.log (last line: -)"}
    table = gpu.build_table(res, {"device": "NVIDIA H100"}, toy=False)
    rows = {r.split(" | ")[0].strip("| "): r for r in table.splitlines() if r.startswith("| ") and " | " in r}
    flux = rows["FLUX.1-dev train step, 512 px, batch 1, bf16 base + grad. checkpointing + AdamW 8-bit + cached "
                "latents/embeddings"]
    assert "1.25 s/step, 40.0 GiB" in flux and "plan 42.0 GiB (1.05x measured; 47.2 with overheads)" in flux
    assert rows["SD3.5-large train step"].split(" | ")[1] == "-" and "sd3-train: timed out" in table
    assert "FLUX.1-dev" not in gpu.build_table(TOY, {"device": "x"}, toy=True)  # not asked: no rows


def test_flow_rows_run_only_when_named(tmp_path, monkeypatch):
    """`--only flux` selects the FLUX.1 step alone; a run without --only leaves both flow steps out."""
    import sys

    gpu = _gpu()
    ran: list[str] = []
    monkeypatch.setattr(gpu, "run_step", lambda name, *a: ran.append(name) or {"data": None, "seconds": 0.0,
                                                                               "error": "x"})
    for argv, want in ((["--toy", "--only", "flux"], ["flux-train"]),
                       (["--toy", "--only", "sd3,sdxl"], ["sdxl-train", "sdxl-generate", "sd3-train"]),
                       (["--toy"], ["generate", "train", "annotate", "sdxl-train", "sdxl-generate", "zero2"])):
        ran.clear()
        monkeypatch.setattr(sys, "argv", ["gpu.py", *argv, "--out", str(tmp_path)])
        gpu.main()
        assert ran == want


@pytest.mark.slow  # ~10-35 s on 2 shared cores (diffusers' imports, two meta builds, a tiny step)
def test_train_flow_builds_the_released_configs_and_runs_at_toy_size(tmp_path, capsys):
    """benchmarks/train_flow.py: the full-size path builds FLUX.1-dev's and SD3.5-large's transformers (and the
    full ControlNets cnet copies from them) on the meta device with the released parameter counts; the toy path
    runs cnet's step on the tiny FLUX base with the memory flags and writes the row with the plan's estimate."""
    import json
    import sys

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import train_flow

    assert train_flow.meta_counts("flux") == {"denoiser": 11_901_408_320, "controlnet": 2_046_461_952}
    assert train_flow.meta_counts("sd3")["denoiser"] == 8_056_627_520
    out = tmp_path / "flux.json"
    # its own process, as gpu.sh runs it: the script's bf16 Accelerator cannot share a process whose
    # AcceleratorState another test already set up with other settings
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "train_flow.py"), "--family", "flux", "--toy",
                        "--res", "64", "--steps", "1", "--warmup", "1", "--json", str(out)],
                       capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    row = json.loads(out.read_text())["rows"][0]
    assert row["res"] == 64 and row["s_per_step"] > 0 and row["plan_gib"] > 0 and row["optimizer"] == "AdamW"
    assert "tiny flux 64px b1" in r.stdout


def _train_bench():
    spec = importlib.util.spec_from_file_location("cnet_bench_train", ROOT / "benchmarks" / "train.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_zero2_rows_compare_peak_memory_with_ddp_or_say_why_they_were_skipped(monkeypatch):
    """Issue #21: 1-GPU DeepSpeed ZeRO-2 with 8-bit Adam against DDP (benchmarks/train.py's @ddp/@zero2
    launchers); without deepspeed the ZeRO-2 row says so instead of failing the run."""
    gpu, bench = _gpu(), _train_bench()
    monkeypatch.setattr(gpu, "has_bitsandbytes", lambda: True)
    assert gpu.zero2_variants(toy=False) == ("cnet @ddp", "cnet --use-8bit-adam @ddp", "cnet --use-8bit-adam @zero2")
    assert gpu.zero2_variants(toy=True) == ("cnet @ddp", "cnet @zero2")
    got = dict(TOY)
    got["zero2"] = {"data": {"batch": 8, "rows": {"cnet @ddp": {"samples_per_s": 20.0, "peak_mib": 8192.0},
                                                 "cnet --use-8bit-adam @ddp": {"samples_per_s": 20.0, "peak_mib": 6144.0}},
                             "skipped": {"cnet --use-8bit-adam @zero2": "deepspeed is not installed (pip install deepspeed)"}},
                    "seconds": 30.0, "error": None}
    table = gpu.build_table(got, {"device": "NVIDIA H100"}, toy=False)
    rows = {r.split(" | ")[0].strip("| "): r for r in table.splitlines() if r.startswith("| ") and " | " in r}
    assert "20.0 samples/s, 8.0 GiB |" in rows["1-GPU DDP + AdamW, train step, batch 8"]
    assert "6.0 GiB (0.75x DDP's peak)" in rows["1-GPU DDP + 8-bit Adam, train step, batch 8"]
    assert "skipped: deepspeed is not installed" in rows["1-GPU DeepSpeed ZeRO-2 + 8-bit Adam, train step, batch 8"]
    assert "1-GPU" not in gpu.build_table(TOY, {"device": "x"}, toy=False)  # not run: no rows
    # the launchers: a plain process, torchrun with one process (DDP), accelerate + the ZeRO-2 example config
    assert bench.launcher("cnet", "cpu") == ([__import__("sys").executable], "")
    assert bench.launcher("cnet @ddp", "cpu")[0][1:4] == ["-m", "torch.distributed.run", "--nproc_per_node"]
    if importlib.util.find_spec("deepspeed") is None:
        assert bench.launcher("cnet @zero2", "cuda") == ([], "deepspeed is not installed (pip install deepspeed)")
    else:
        assert "DeepSpeed runs only on CUDA" in bench.launcher("cnet @zero2", "cpu")[1]
        assert "deepspeed_zero2.yaml" in bench.launcher("cnet @zero2", "cuda")[0][4]


@pytest.mark.slow
def test_zero2_step_runs_at_toy_size_on_the_cpu(tmp_path):
    """The real worker launch: the DDP variant under torchrun (1 gloo process), the ZeRO-2 one skipped with
    its reason (no deepspeed, or no CUDA), and the JSON gpu.py reads."""
    import json
    import sys

    out = tmp_path / "z.json"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "train.py"), "--size", "tiny", "--device", "cpu",
                        "--batch", "2", "--steps", "1", "--warmup", "1", "--threads", "1", "--variants",
                        "cnet @ddp,cnet @zero2", "--json", str(out)], capture_output=True, text=True, timeout=400,
                       env=os.environ | {"OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""})
    assert r.returncode == 0, r.stderr[-2000:]
    data = json.loads(out.read_text())
    assert data["rows"]["cnet @ddp"]["peak_mib"] > 0 and "cnet @zero2" not in data["rows"]
    assert "cnet @zero2 (batch 2): skipped:" in r.stdout and data["skipped"]["cnet @zero2"]
