"""The paper's four prompt modes.

- `none`: the empty prompt (the hint alone drives the image),
- `default`: "a professional, detailed, high-quality image",
- `user`: the user's `--prompt` (one for every hint, or one per hint),
- `auto`: pass 1 with the default prompt, BLIP captions each result, pass 2 uses that caption
  (same seed and hint). The README's fully automatic pipeline.

No words are added unless asked (`added_prompt`, e.g. ControlNet's demo "best quality, extremely detailed").
"""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import UsageError

PROMPT_MODES = ("none", "default", "user", "auto")
DEFAULT_PROMPT = "a professional, detailed, high-quality image"


def resolve_mode(mode: str | None, prompt: Sequence[str]) -> str:
    """`user` when a prompt is given, `default` otherwise; refuse `user` without a prompt (or with an empty
    one of several per-hint prompts)."""
    if mode is None:
        mode = "user" if prompt else "default"
    if mode not in PROMPT_MODES:
        raise UsageError(f"--prompt-mode {mode}: unknown mode (valid: {', '.join(PROMPT_MODES)})")
    if mode == "user":
        blank = [k for k, p in enumerate(prompt) if not p.strip()]
        if not prompt or len(blank) == len(prompt):
            raise UsageError("--prompt-mode user needs a prompt: pass --prompt TEXT (or use --prompt-mode default)")
        if blank:
            raise UsageError(f"--prompt number {blank[0] + 1} of {len(prompt)} is empty: give a prompt for every "
                             "hint (or one --prompt for all)")
    if prompt and mode in ("none", "default", "auto"):
        raise UsageError(f"--prompt is ignored with --prompt-mode {mode}: drop one of them")
    return mode


def per_job(prompt: Sequence[str], jobs: int, hints: int) -> list[str | None]:
    """The user prompt of each of `jobs` jobs (None outside user mode): one prompt for all, or one per job.
    `hints` > `jobs` means several hints compose into each image (multi-ControlNet): then one prompt."""
    if not prompt:
        return [None] * jobs
    if len(prompt) == 1:
        return list(prompt) * jobs
    if len(prompt) != jobs:
        if jobs == 1 and hints > 1:
            raise UsageError(f"--prompt: {len(prompt)} prompts, but the {hints} hints compose into one image "
                             "(multi-ControlNet); give one --prompt")
        raise UsageError(f"--prompt: {len(prompt)} prompts for {jobs} hints; give one, or one per hint")
    return list(prompt)


def join(prompt: str, added: str) -> str:
    prompt, added = prompt.strip(), added.strip()
    if prompt and added:
        return f"{prompt}, {added}"
    return prompt or added


def first_pass_prompt(mode: str, prompt: str | None, added: str = "") -> str:
    """The prompt of the (first) pass for a mode; `auto`'s pass 2 uses `join(caption, added)`."""
    base = {"none": "", "default": DEFAULT_PROMPT, "auto": DEFAULT_PROMPT}.get(mode, prompt or "")
    return join(base, added)
