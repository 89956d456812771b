"""typer's own parse errors (unknown option or choice, missing argument, a word where a number goes) as one line.

typer raises click's exception family, all `typer.TyperException`s (with `standalone_mode=False`; otherwise it
prints its usage box). The fields read here (`param`, `possibilities`, `option_name`, `ctx`) are click's
documented exception attributes, read with getattr so that a typer without one still gives a line.

Kept instead of typer's own rendering because that one is a multi-line rich box (usage, border, hint) and
cnet's contract is one error line naming the flag and the fix, the same for parse errors as for bad values.
"""

from __future__ import annotations

import difflib
import re
from typing import Any


def usage_message(e: Exception, argv: list[str], root: Any) -> str:
    """`e` from parsing `argv` as one line: the flag, what is wrong, "see cnet CMD --help". `root`: the click
    command of the whole app (`typer.main.get_command(app)`), to name the subcommand when `e` carries no context."""
    ctx = getattr(e, "ctx", None)
    path, cmd = (ctx.command_path, ctx.command) if ctx is not None else _command_path(argv, root)
    text = e.format_message().strip() if hasattr(e, "format_message") else str(e).strip()
    msg = text.splitlines()[0].rstrip(".") if text else type(e).__name__
    param, option = getattr(e, "param", None), getattr(e, "option_name", None)
    if param is not None and type(e).__name__ == "MissingParameter":
        line = f"missing {param.param_type_name} {_flag(param, argv, ctx)}"
    elif param is not None:
        line = _bad_value(str(getattr(e, "message", msg)), _flag(param, argv, ctx), argv)
    elif option is not None and msg.startswith("No such option"):
        near = sorted(getattr(e, "possibilities", None) or [])
        line = f"{option}: no such option" + (f" (did you mean {_or(near)}?)" if near else "")
    elif option is not None:  # "Option '--device' requires an argument."
        line = f"{option}: " + re.sub(rf"^Option '{re.escape(option)}' ", "", msg)
    elif m := re.match(r"^No such command '(.*?)'", msg):  # typer may append its own "Did you mean"
        line = _no_such_command(m.group(1), sorted(getattr(cmd, "commands", {})))
    else:
        line = msg[:1].lower() + msg[1:]
    return f"{line}; see {path} --help"


def _bad_value(why: str, flag: str, argv: list[str]) -> str:
    given = _value(flag, argv)
    why = re.sub(r"^Value error, ", "", why).strip().rstrip(".")  # typer's pydantic coercion wording
    if m := re.match(r"^(.*) is not one of (.*)$", why):  # a choice: list the choices unquoted
        choices = re.findall(r"'([^']*)'", m.group(2))
        why = f"{m.group(1)} is not one of {', '.join(choices) if choices else m.group(2)}"
    elif why.startswith("Input should be "):  # "Input should be a valid integer, unable to parse ..."
        kind = re.sub(r", unable to parse.*$", "", why[len("Input should be "):])
        why = f"{given!r} is not {kind}" if given is not None else f"should be {kind}"
    return f"{flag}: {why}" if given is None or repr(given) in why else f"{flag} {given!r}: {why}"


def _no_such_command(name: str, names: list[str]) -> str:
    near = [n for n in names if n.startswith(name)] or difflib.get_close_matches(name, names)
    if near:
        return f"no such command {name!r} (did you mean {_or(near)}?)"
    return f"no such command {name!r}; commands: {', '.join(names)}"


def _command_path(argv: list[str], root: Any) -> tuple[str, Any]:
    """The subcommand path argv names ("cnet train", "cnet data circles") and its command: an option's usage
    error (`--resume` without a value) carries no context to ask."""
    cmd, path = root, ["cnet"]
    for tok in argv:
        sub = getattr(cmd, "commands", {}).get(tok)
        if sub is None:
            if tok.startswith("-"):
                continue  # a root option before the subcommand
            break
        path.append(tok)
        cmd = sub
    return " ".join(path), cmd


def _flag(param: Any, argv: list[str], ctx: Any = None) -> str:
    """The flag as the user spelled it (`--lr` for --learning-rate, `--max_train_steps` that the command's
    token normalizer maps to --max-steps; a short one with its long name: `-t/--type`), else its first name;
    an argument as the usage line shows it (INPUT..., FOLDER)."""
    if getattr(param, "param_type_name", "") == "argument":
        return param.get_error_hint().strip("'").upper()
    names = [*param.opts, *param.secondary_opts]
    norm = getattr(ctx, "token_normalize_func", None)
    if norm is not None:
        for tok in reversed(argv):
            key = tok.split("=", 1)[0]
            if key.startswith("--") and key not in names and "--" + norm(key[2:]) in names:
                return key
    spelled = next((n for tok in reversed(argv) for n in names if _given(n, tok, None) is not None or tok == n),
                   param.opts[0])
    long = next((n for n in param.opts if n.startswith("--")), None)
    return spelled if spelled.startswith("--") or long is None else f"{spelled}/{long}"


def _given(flag: str, tok: str, nxt: str | None) -> str | None:
    """The value `tok` (followed by `nxt`) gives `flag`: `--flag V`, `--flag=V`, or a short flag's `-fV`."""
    if tok == flag:
        return nxt
    if flag.startswith("--"):
        return tok[len(flag) + 1:] if tok.startswith(flag + "=") else None
    return tok[len(flag):] if tok.startswith(flag) and not tok.startswith("--") and len(tok) > len(flag) else None


def _value(flag: str, argv: list[str]) -> str | None:
    """The last value given to `flag` in argv (for `-t/--type`: to either spelling)."""
    value = None
    for i, tok in enumerate(argv):
        for f in flag.split("/"):
            v = _given(f, tok, argv[i + 1] if i + 1 < len(argv) else None)
            value = v if v is not None else value
    return value


def _or(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]
