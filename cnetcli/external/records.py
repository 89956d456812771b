"""The declared schemas of what cnet reads back from disk and PNGs (pydantic v2 models on `Record`).

Each model states the types and ranges the code that uses the record relies on; fields the code does not
read stay free (extra keys are kept). Readers call `schema.validate(Model, data, source)`.
"""

from __future__ import annotations

import math
from pathlib import PurePosixPath
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field

from .schema import Bool, Float, Int, NonNeg, Record, Str

#: torch.Generator.manual_seed takes [0, 2**64)
SEED_LIMIT = 2**64


def _inside(rel: str) -> str:
    """A manifest entry: a relative POSIX path that stays inside the checkpoint folder."""
    p = PurePosixPath(rel)
    if not rel or "\\" in rel or "\0" in rel or p.is_absolute() or ".." in p.parts or str(p) != rel:
        raise ValueError("a relative path inside the checkpoint")
    return rel


def _positive_finite(v: float) -> float:
    if not (math.isfinite(v) and v > 0):
        raise ValueError("a finite number > 0")
    return v


Seed = Annotated[Int, Field(ge=0, lt=SEED_LIMIT)]
Sha256 = Annotated[Str, Field(pattern=r"^[0-9a-f]{64}$")]
InsidePath = Annotated[str, AfterValidator(_inside)]


# ------------------------------------------------------------------------------------------ checkpoints
class ManifestFile(Record):
    size: NonNeg
    sha256: Sha256


class Manifest(Record):
    """checkpoints/step-N/manifest.json: every other file of the checkpoint, its size and sha256."""

    format: Literal["cnet-checkpoint/2"]
    step: NonNeg
    run_id: Str = ""
    written_at: Float = 0.0
    files: dict[InsidePath, ManifestFile]


class LRSchedulerState(Record):
    """A torch LR scheduler's state_dict (diffusers' schedules are LambdaLR): the counters and rates that
    `load_state_dict` copies onto the scheduler unchecked."""

    last_epoch: Annotated[Int, Field(ge=-1)]
    base_lrs: list[Float] | None = None
    step_count: NonNeg | None = Field(None, alias="_step_count")
    last_lr: list[Float] | None = Field(None, alias="_last_lr")


class CheckpointState(Record):
    """checkpoints/step-N/state.json."""

    step: NonNeg
    lr_scheduler: LRSchedulerState
    losses: list[Float] = Field(max_length=1 << 24)
    unet_unlocked: Bool = False
    down_connected: Bool = False


class OptimizerRecord(Record):
    """checkpoints/step-N/optimizer.json: param groups and the non-tensor per-parameter state."""

    param_groups: list[dict[str, Any]]
    scalars: dict[Annotated[str, Field(pattern=r"^\d{1,9}$")], dict[str, Any]] = {}


class SavedTrainConfig(Record):
    """A checkpoint's train_config.json: the run's resolved settings (each typed by `TrainConfig.from_dict`;
    here what a resume relies on being resolved)."""

    max_steps: Annotated[Int, Field(ge=1)]
    requested: dict[str, Any] = {}  # the settings asked where they differ from what ran ("auto")


class RunEvent(Record):
    """One line of OUTPUT/runs.jsonl (a start, a resume, a forced configuration change)."""

    event: Str = "?"
    time: Str = "?"
    step: Int | None = None
    from_: Str | None = Field(None, alias="from")
    changes: dict[str, Annotated[list[Any], Field(min_length=2, max_length=2)]] = {}


class ControllabilityRow(Record):
    """One line of OUTPUT/validation/controllability.jsonl."""

    step: NonNeg
    metric: Str
    value: Float
    n: NonNeg | None = None


class TrainResult(Record):
    """The `result` a finished run's train_config.json records."""

    steps: NonNeg | None = None
    final_loss: Float | None = None


# --------------------------------------------------------------------------------- generated images
class RecordedControlNet(Record):
    hint: Str | None = None
    model: Str | None = None
    type: Str | None = None
    scale: Float
    start: Float = 0.0
    end: Float = 1.0


class GenerationRecord(Record):
    """The `cnet` chunk / JSON sidecar of an image `cnet generate` wrote (what `--from` repeats)."""

    config: dict[str, Any]
    seed: Seed | None = None
    pass_: Int | None = Field(None, alias="pass")
    prompt: Str = ""
    scale: Float | list[Float] | None = None
    controlnets: list[RecordedControlNet] = []


class ProvenanceRecord(Record):
    """The `cnet` chunk of a hint PNG (strict reading: `Provenance.read(strict=True)`)."""

    type: Annotated[Str, Field(min_length=1)]
    params: dict[str, Any] = {}
    detect_resolution: Annotated[Int, Field(ge=1)] | None = None
    image_resolution: Annotated[Int, Field(ge=1)] | None = None
    keep_size: Bool = False
    source: Str | None = None


# ---------------------------------------------------------------------------------------- model files
class ControlNetConfig(Record):
    """A diffusers ControlNet folder's config.json: the class it names and the values diffusers would take
    unchecked (the dimensions are checked by `models.compat.validate_config`, the class against every model
    family's by `models.controlnet`, where the families are known)."""

    class_name: Str | None = Field(None, alias="_class_name")
    norm_eps: Annotated[Float, AfterValidator(_positive_finite)] | None = None
    conditioning_scale: Float | None = None


class TensorEntry(Record):
    dtype: Str
    shape: list[Annotated[Int, Field(ge=0)]]
    data_offsets: Annotated[list[Annotated[Int, Field(ge=0)]], Field(min_length=2, max_length=2)]


# ---------------------------------------------------------------------------------- launcher variables
class LauncherEnv(Record):
    """RANK/WORLD_SIZE (or the MPI launchers' names) and LOCAL_WORLD_SIZE, as integers in range."""

    model_config = Record.model_config | {"strict": False}
    rank: Annotated[int, Field(ge=0, lt=1 << 20)] = 0
    world_size: Annotated[int, Field(ge=1, le=1 << 20)] = 1
    local_world_size: Annotated[int, Field(ge=1, le=1 << 16)] = 1


# ------------------------------------------------------------------------------ AUTOMATIC1111 infotext
class _Text(Record):
    """A1111 writes every value as text: numbers are parsed from it ("20" -> 20, "4.0" -> 4; "20abc",
    "4.5" as an integer, "lots" as a number are refused)."""

    model_config = Record.model_config | {"strict": False, "populate_by_name": False}


class InfotextValues(_Text):
    """The `Key: value` fields of A1111's parameters text that map onto cnet."""

    steps: Annotated[int, Field(ge=1)] | None = Field(None, alias="Steps")
    cfg: Float | None = Field(None, alias="CFG scale")
    seed: Annotated[int, Field(ge=-1, lt=SEED_LIMIT)] | None = Field(None, alias="Seed")
    width: Annotated[int, Field(ge=1)] | None = Field(None, alias="Size-1")
    height: Annotated[int, Field(ge=1)] | None = Field(None, alias="Size-2")
    eta: Float | None = Field(None, alias="Eta DDIM")
    sampler: str | None = Field(None, alias="Sampler")
    schedule: str = Field("Automatic", alias="Schedule type")


class InfotextUnit(_Text):
    """One sd-webui-controlnet unit (`ControlNet N: "Module: canny, Model: ..., Weight: 1.0, ..."`)."""

    module: str = "none"
    weight: Float = 1.0
    guidance_start: Float = 0.0
    guidance_end: Float = 1.0
    control_mode: str = "Balanced"
    resize_mode: str = "Crop and Resize"
