"""CLI subcommands: typer + rich only. Each module exposes `register(app)` and calls one core function."""
