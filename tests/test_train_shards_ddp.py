"""Streamed shards under several processes (gloo DDP on CPU): torchrun on one node and across two "nodes" on
localhost, 2 and 4 processes, and a 2-process run resumed from its checkpoint ends with a straight run's
weights. A resume with another process count is refused with what to run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from cnetcli.errors import UsageError
from cnetcli.training import train
from cnetcli.training.launch import _free_port, train_in_processes
from tests.test_train_shards import _cn, cfg, write_shards

pytestmark = pytest.mark.usefixtures("one_torch_thread")
FLAGS = ["--image-column", "jpg", "--conditioning-column", "conditioning_image.png", "--caption-column", "txt"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return write_shards(tmp_path_factory.mktemp("shards"), bad=False)


def _env():
    return os.environ | {"OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": os.getcwd()}


def _cli(sd8, shards, out, steps=2):
    return ["-m", "cnetcli", "train", "--base", str(sd8), "--data", str(shards / "{00000..00003}.tar"), *FLAGS,
            "--output", str(out), "--resolution", "32", "--batch-size", "1", "--max-steps", str(steps),
            "--checkpoint-every", "0", "--report-to", "none", "--device", "cpu"]


def _torchrun():
    return [sys.executable, "-m", "torch.distributed.run"]


@pytest.mark.slow
def test_torchrun_two_processes_trains_on_shards(sd8, shards, tmp_path):
    r = subprocess.run([*_torchrun(), "--nproc_per_node", "2", "--master_port", str(_free_port()),
                        *_cli(sd8, shards, tmp_path / "o")], env=_env(), capture_output=True, text=True, timeout=400)
    assert r.returncode == 0, r.stderr[-3000:]
    meta = json.loads((tmp_path / "o" / "train_config.json").read_text())
    assert meta["result"]["processes"] == 2 and meta["result"]["steps"] == 2


@pytest.mark.slow
def test_two_nodes_on_localhost(sd8, shards, tmp_path):
    """Two torchrun invocations, --nnodes 2, one process each, meeting at a rendezvous on 127.0.0.1."""
    port = str(_free_port())
    procs = [subprocess.Popen([*_torchrun(), "--nnodes", "2", "--node_rank", str(node), "--nproc_per_node", "1",
                               "--master_addr", "127.0.0.1", "--master_port", port, *_cli(sd8, shards, tmp_path / "o")],
                              env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for node in (0, 1)]
    outs = [p.communicate(timeout=400)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs[0][-2000:] + outs[1][-2000:]
    meta = json.loads((tmp_path / "o" / "train_config.json").read_text())
    assert meta["result"]["processes"] == 2


@pytest.mark.slow
def test_two_process_resume_equals_straight_run(sd8, shards, tmp_path):
    kw = dict(batch_size=2, max_steps=4, checkpoint_every=2, cache_latents=False)
    straight = train_in_processes(cfg(sd8, str(shards), tmp_path / "a", **kw), 2, timeout=300)
    # the run "stopped" at step 2: its checkpoint alone, resumed in a fresh output folder
    shutil.copytree(tmp_path / "a" / "checkpoints" / "step-2", tmp_path / "b" / "checkpoints" / "step-2")
    rec = json.loads((tmp_path / "b" / "checkpoints" / "step-2" / "state.json").read_text())
    assert rec["world_size"] == 2 and sorted(rec["stream"]["positions"]) == ["0", "1"]
    resumed = train_in_processes(cfg(sd8, str(shards), tmp_path / "b", resume="latest", **kw), 2, timeout=300)
    assert resumed.start_step == 2 and resumed.steps == 4
    a, b = _cn(straight.controlnet_dir), _cn(resumed.controlnet_dir)
    assert all(bool((a[k] == b[k]).all()) for k in a)
    # one process cannot continue the 2-process stream: refused with what to run (the checkpoint holds the
    # per-process batch, 1)
    with pytest.raises(UsageError, match="world 2 \\(now 1\\).*resume with 2 processes"):
        train(cfg(sd8, str(shards), tmp_path / "b", resume="latest", **(kw | {"batch_size": 1})))


@pytest.mark.slow
def test_four_processes(sd8, shards, tmp_path):
    res = train_in_processes(cfg(sd8, str(shards), tmp_path / "o", batch_size=4, max_steps=2), 4, timeout=400)
    assert res.processes == 4 and res.steps == 2 and res.samples == 8


@pytest.mark.slow
def test_accelerate_launch_with_the_example_config(sd8, shards, tmp_path):
    """examples/accelerate/cpu_ddp.yaml: accelerate starts 2 processes (through torchrun), gloo DDP on CPU."""
    r = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                        "examples/accelerate/cpu_ddp.yaml", "--main_process_port", str(_free_port()),
                        *_cli(sd8, shards, tmp_path / "o")], env=_env(), capture_output=True, text=True, timeout=400)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "2 processes (MULTI_GPU" in r.stdout + r.stderr or "2 processes (MULTI_CPU" in r.stdout + r.stderr
    assert json.loads((tmp_path / "o" / "train_config.json").read_text())["result"]["processes"] == 2


@pytest.mark.slow
def test_two_process_cached_shards(sd8, shards, tmp_path):
    """--cache-latents on 2 processes: each rank encodes its half of the shards; at batch 1 the run equals
    the uncached one, and a resume (into a fresh folder: it encodes the cache again) equals the straight run
    (the fast single-process siblings: test_train_shard_cache.py)."""
    kw = dict(batch_size=1, max_steps=4, checkpoint_every=2, hflip=True, empty_prompt_prob=0.5)
    cached = train_in_processes(cfg(sd8, str(shards), tmp_path / "a", cache_latents=True, **kw), 2, timeout=300)
    assert len(list(cached.cache_path.glob("*.safetensors"))) == 4
    plain = train_in_processes(cfg(sd8, str(shards), tmp_path / "u", cache_latents=False, **kw), 2, timeout=300)
    shutil.copytree(tmp_path / "a" / "checkpoints" / "step-2", tmp_path / "b" / "checkpoints" / "step-2")
    resumed = train_in_processes(cfg(sd8, str(shards), tmp_path / "b", resume="latest", cache_latents=True, **kw),
                                 2, timeout=300)
    a, u, b = (_cn(r.controlnet_dir) for r in (cached, plain, resumed))
    assert all(bool((a[k] == u[k]).all()) and bool((a[k] == b[k]).all()) for k in a)
