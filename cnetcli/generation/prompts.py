"""The paper's four prompt modes.

- `none`: the empty prompt (the hint alone drives the image),
- `default`: "a professional, detailed, high-quality image",
- `user`: the user's `--prompt`,
- `auto`: pass 1 with the default prompt, BLIP captions each result, pass 2 uses that caption
  (same seed and hint). The README's fully automatic pipeline.

No words are added unless asked (`added_prompt`, e.g. ControlNet's demo "best quality, extremely detailed").
"""

from __future__ import annotations

from ..errors import UsageError

PROMPT_MODES = ("none", "default", "user", "auto")
DEFAULT_PROMPT = "a professional, detailed, high-quality image"


def resolve_mode(mode: str | None, prompt: str | None) -> str:
    """`user` when a prompt is given, `default` otherwise; refuse `user` without a prompt."""
    if mode is None:
        mode = "user" if prompt else "default"
    if mode not in PROMPT_MODES:
        raise UsageError(f"--prompt-mode {mode}: unknown mode (valid: {', '.join(PROMPT_MODES)})")
    if mode == "user" and not (prompt and prompt.strip()):
        raise UsageError("--prompt-mode user needs a prompt: pass --prompt TEXT (or use --prompt-mode default)")
    if prompt and mode in ("none", "default", "auto"):
        raise UsageError(f"--prompt is ignored with --prompt-mode {mode}: drop one of them")
    return mode


def join(prompt: str, added: str) -> str:
    prompt, added = prompt.strip(), added.strip()
    if prompt and added:
        return f"{prompt}, {added}"
    return prompt or added


def first_pass_prompt(mode: str, prompt: str | None, added: str = "") -> str:
    """The prompt of the (first) pass for a mode; `auto`'s pass 2 uses `join(caption, added)`."""
    base = {"none": "", "default": DEFAULT_PROMPT, "auto": DEFAULT_PROMPT}.get(mode, prompt or "")
    return join(base, added)
