"""typer's own parse errors (unknown choice/option/command, missing argument or value, a word for a number)
print one `error:` line naming the flag and where help is, exit 2: no usage box, no traceback."""

from __future__ import annotations

import pytest

CASES = [
    # (arguments, words the one line must hold)
    # annotate
    (["annotate", "in", "-t", "nope"], ["-t/--type: unknown hint type 'nope'", "canny", "see cnet annotate --help"]),
    (["annotate", "in", "-jx"], ["-j/--workers: 'x' is not a valid integer"]),  # a short flag's glued value
    (["annotate", "in", "--overwrit"], ["--overwrit: no such option", "did you mean --overwrite"]),
    (["annotate", "-t", "canny"], ["missing argument INPUT...", "see cnet annotate --help"]),
    (["annotate", "in", "--workers", "many"], ["--workers", "'many' is not a valid integer"]),
    (["annotate", "in", "--sigma", "wide"], ["--sigma", "'wide' is not a valid number"]),
    # train
    (["train", "--mixed-precision", "fp8"], ["--mixed-precision", "'fp8' is not one of", "bf16", "see cnet train --help"]),
    (["train", "--max-step", "3"], ["--max-step: no such option", "--max-steps"]),
    (["train", "--resume"], ["--resume", "requires an argument", "see cnet train --help"]),
    (["train", "--batch-size", "two"], ["--batch-size", "'two' is not a valid integer"]),
    (["train", "--lr", "fast"], ["--lr", "'fast' is not a valid number"]),  # named as spelled (an alias)
    (["train", "--max_train_steps=1e3"], ["--max_train_steps", "'1e3' is not a valid integer"]),
    # generate
    (["generate", "--sampler", "nope"], ["--sampler: 'nope' is not one of", "ddim", "dpmpp_2m", "see cnet generate --help"]),
    (["generate", "--sampeler", "ddim"], ["--sampeler: no such option", "did you mean", "--sampler"]),
    (["generate", "--hint"], ["--hint", "requires an argument", "see cnet generate --help"]),
    (["generate", "--steps", "1.5"], ["--steps", "'1.5' is not a valid integer"]),
    (["generate", "--device", "tpu"], ["--device 'tpu'", "not a device", "auto"]),
    # the others and the root
    (["eval"], ["missing argument FOLDER", "see cnet eval --help"]),
    (["data", "circles", "--size", "big", "out"], ["--size", "'big'", "see cnet data circles --help"]),
    (["data", "circ"], ["no such command 'circ'", "did you mean circles", "see cnet data --help"]),
    (["gen", "--steps", "3"], ["no such command 'gen'", "did you mean generate", "see cnet --help"]),
    (["--bogus"], ["--bogus: no such option", "see cnet --help"]),
]


@pytest.mark.parametrize("args,words", CASES, ids=[" ".join(a) for a, _ in CASES])
def test_parse_error_is_one_line(run_cli, args, words):
    code, out, err = run_cli(*args)
    shown = f"exit {code}\n--- stdout\n{out}\n--- stderr\n{err}"
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2, shown
    assert len(lines) == 1 and lines[0].startswith("error: "), shown
    assert out == "" and "Traceback" not in err and "Usage:" not in err and "╭" not in err, shown
    for w in words:
        assert w in lines[0], f"{w!r} not in the line\n{shown}"


def test_no_arguments_still_print_help(run_cli):
    """`cnet` and a group without its subcommand keep typer's help (on stdout) and its exit 2."""
    for args in ([], ["data"], ["annotate"]):
        code, out, err = run_cli(*args)
        assert code == 2 and "Usage:" in out and "error:" not in err, (args, out, err)


def test_help_and_version_unchanged(run_cli):
    code, out, err = run_cli("generate", "--help")
    assert code == 0 and "--sampler" in out and err == ""
    code, out, _ = run_cli("--version")
    assert code == 0 and out.startswith("cnet ")


def test_debug_shows_the_parse_error_itself(run_cli, monkeypatch):
    """CNET_DEBUG=1 re-raises, as for CnetError, so the traceback (here: typer's BadParameter) is visible."""
    import typer

    monkeypatch.setenv("CNET_DEBUG", "1")
    with pytest.raises(typer.TyperException, match="valid integer"):
        run_cli("generate", "--steps", "many")


def test_a_commands_exit_code_comes_through(run_cli, monkeypatch):
    """standalone_mode=False hands `typer.Exit(n)` back as a return value: main must still exit with n
    (annotate exits 1 when a file failed)."""
    import types

    import cnetcli.annotation

    summary = types.SimpleNamespace(failed=[("a.png", "not an image")], shard=(0, 1), dataset=None,
                                    output_dirs=["out"], done=0, skipped=0, seconds=0.0)
    monkeypatch.setattr(cnetcli.annotation, "annotate_paths", lambda cfg, reporter: summary)
    code, out, err = run_cli("annotate", "-t", "canny", "a.png", "-q")
    assert code == 1 and "failed: a.png: not an image" in err and "0 done" in out, (out, err)
