"""Do a ControlNet, a base and a scheduler fit together? Checked from configs only, before weights load.

`check_controlnet_fits(controlnet_config, denoiser_config)` compares what must agree for the ControlNet's residuals
to be added to the base UNet (text width, block channels, latent channels, residual count, added conditioning)
and raises ONE line saying which shapes disagree and which family each side looks like. `validate_config`
refuses configs with negative, zero or non-numeric dimensions before a library turns them into a traceback.
"""

from __future__ import annotations

from typing import Any

from ..errors import ModelLoadError
from .families import family_of
from .model_config import config_get

#: Scheduler prediction types that cnet's training loss and sampling handle.
SUPPORTED_PREDICTION_TYPES = ("epsilon", "v_prediction")

_POSITIVE_INTS = ("in_channels", "conditioning_channels", "norm_num_groups", "addition_time_embed_dim",
                  "projection_class_embeddings_input_dim", "sample_size", "out_channels", "latent_channels")
_POSITIVE_LISTS = ("block_out_channels", "conditioning_embedding_out_channels")
_INT_OR_LIST = ("layers_per_block", "cross_attention_dim", "attention_head_dim", "num_attention_heads",
                "transformer_layers_per_block")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def validate_config(cfg: Any, where: str) -> None:
    """Refuse a model config whose dimensions are not positive integers (or lists of them) in one line."""
    if not isinstance(cfg, dict) and not hasattr(cfg, "get"):
        raise ModelLoadError(f"{where}: not a model config (a JSON object is expected)")

    def bad(key: str, v: Any, what: str) -> ModelLoadError:
        return ModelLoadError(f"{where}: {key} = {v!r} is not {what}; fix the config or download it again")

    for key in _POSITIVE_INTS:
        v = config_get(cfg, key)
        if v is not None and not (_is_int(v) and v > 0):
            raise bad(key, v, "a positive integer")
    for key in _POSITIVE_LISTS:
        v = config_get(cfg, key)
        if v is not None and not (isinstance(v, (list, tuple)) and v and all(_is_int(x) and x > 0 for x in v)):
            raise bad(key, v, "a non-empty list of positive integers")
    for key in _INT_OR_LIST:
        v = config_get(cfg, key)
        if v is None:
            continue
        items = v if isinstance(v, (list, tuple)) else [v]
        low = 0 if key == "transformer_layers_per_block" else 1
        ok = bool(items) and all(
            (_is_int(x) and x >= low) or (isinstance(x, (list, tuple)) and all(_is_int(y) and y >= low for y in x))
            for x in items)
        if not ok:
            raise bad(key, v, f"an integer >= {low} (or a list of them)")
    for key in ("down_block_types", "up_block_types"):
        v = config_get(cfg, key)
        if v is not None and not (isinstance(v, (list, tuple)) and v and all(isinstance(x, str) for x in v)):
            raise bad(key, v, "a list of block type names")
    boc, dbt = config_get(cfg, "block_out_channels"), config_get(cfg, "down_block_types")
    if boc is not None and dbt is not None and len(boc) != len(dbt):
        raise ModelLoadError(f"{where}: block_out_channels has {len(boc)} entries but down_block_types {len(dbt)}; "
                             "fix the config or download it again")


def family_label(cfg: Any) -> str | None:
    """What a denoiser's/ControlNet's config looks like (its family's `describe`: e.g. SD1.x, SD2.x, SDXL), for
    messages; None when no release it knows looks like this."""
    return family_of(cfg).describe(cfg)


def _residuals(cfg: Any) -> int | None:
    """How many down-block residuals a UNet/ControlNet produces (what the UNet expects one-to-one)."""
    boc, lpb = config_get(cfg, "block_out_channels"), config_get(cfg, "layers_per_block")
    if not boc or lpb is None:
        return None
    per = list(lpb) if isinstance(lpb, (list, tuple)) else [lpb] * len(boc)
    return 1 + sum(per) + len(boc) - 1


def fit_problems(controlnet_config: Any, denoiser_config: Any) -> list[str]:
    """Each way the ControlNet does not fit the base, as a phrase (empty when it fits)."""
    cn, un = controlnet_config, denoiser_config
    cf, uf = family_of(cn), family_of(un)
    if cf.controlnet_class_name != uf.controlnet_class_name:  # e.g. a FLUX ControlNet on an SD3 base
        return [f"it is a {cf.label} ControlNet ({cf.controlnet_class_name}), the base is {uf.label}"]
    own = cf.fit_problems(cn, un)
    if own is not None:  # a family whose ControlNet config has other keys checks them itself
        return own
    out = []
    cw, uw = config_get(cn, "cross_attention_dim"), config_get(un, "cross_attention_dim")
    if cw != uw:
        out.append(f"cross_attention_dim {cw} does not fit the base's {uw}")
    ce, ue = config_get(cn, "addition_embed_type"), config_get(un, "addition_embed_type")
    if ce != ue:
        out.append(f"addition_embed_type {ce!r} does not fit the base's {ue!r}")
    cb, ub = config_get(cn, "block_out_channels"), config_get(un, "block_out_channels")
    if cb is not None and ub is not None and list(cb) != list(ub):
        out.append(f"block_out_channels {list(cb)} do not fit the base's {list(ub)}")
    ci, ui = config_get(cn, "in_channels"), config_get(un, "in_channels")
    if ci != ui:
        out.append(f"in_channels {ci} do not fit the base's {ui} latent channels")
    cr, ur = _residuals(cn), _residuals(un)
    if not out and cr != ur:
        out.append(f"{cr} down-block residuals do not fit the base's {ur} (layers_per_block "
                   f"{config_get(cn, 'layers_per_block')} vs {config_get(un, 'layers_per_block')})")
    if not out and ce == "text_time":
        cp, up = config_get(cn, "projection_class_embeddings_input_dim"), config_get(un, "projection_class_embeddings_input_dim")
        if cp != up:
            out.append(f"projection_class_embeddings_input_dim {cp} does not fit the base's {up}")
    return out


def check_controlnet_fits(controlnet_config: Any, denoiser_config: Any, name: str = "--controlnet",
                          *, hint_channels: int | None = None, vae_config: Any = None) -> None:
    """Raise one ModelLoadError line when the ControlNet (config) cannot drive the base UNet (config).

    `hint_channels`: the channels of the hint images it will get (3 for RGB hints); `vae_config`: the base's
    VAE config, to check that the hint encoder downsamples images to the latent size."""
    problems = fit_problems(controlnet_config, denoiser_config)
    ch = config_get(controlnet_config, "conditioning_channels", 3)
    if hint_channels is not None and ch != hint_channels:
        problems.append(f"its hint encoder takes {ch}-channel hints, the hints have {hint_channels}")
    emb = config_get(controlnet_config, "conditioning_embedding_out_channels")
    vboc = config_get(vae_config, "block_out_channels") if vae_config is not None else None
    if emb and vboc:
        hint_factor, vae_factor = 2 ** (len(emb) - 1), 2 ** (len(vboc) - 1)
        if hint_factor != vae_factor:
            problems.append(f"its hint encoder downsamples {hint_factor}x, the base's VAE {vae_factor}x")
    if problems:
        cf, uf = family_label(controlnet_config), family_label(denoiser_config)
        guess = f" (an {cf} ControlNet on an {uf} base?)" if cf != uf and cf and uf else ""
        raise ModelLoadError(f"{name}: {'; '.join(problems)}{guess}")


def check_prediction_type(scheduler_config: Any, name: str = "--base") -> str:
    """The scheduler's prediction type, refused in one line unless cnet handles it."""
    p = config_get(scheduler_config, "prediction_type", "epsilon")
    if p not in SUPPORTED_PREDICTION_TYPES:
        raise ModelLoadError(f"{name}: scheduler prediction_type {p!r} is not supported "
                             f"({' or '.join(SUPPORTED_PREDICTION_TYPES)})")
    return p
