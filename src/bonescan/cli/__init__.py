"""The `bonescan` command: thin wrappers that parse arguments and call the library.

Each job lives in its own module here and adds its commands through `register(app, bench)`.
A BoneScanError becomes one line on stderr and exit code 2.
"""

from __future__ import annotations

import importlib
import sys

import typer

from .. import __version__
from ..errors import BoneScanError

# One module per job; each defines register(app, bench).
COMMAND_MODULES = (
    "inspect", "cohort", "synth", "train", "evaluate", "predict", "quantize", "recalibrate", "pretrain", "reader",
    "demo", "node", "annotations", "imports", "followup", "lesions",
)

app = typer.Typer(
    name="bonescan",
    help="AI-assisted reading of whole-body bone scintigraphy (anterior + posterior views) for bone metastasis.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
bench = typer.Typer(help="Benchmarks that print speed and memory figures.", no_args_is_help=True)
app.add_typer(bench, name="bench")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"bonescan {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """bonescan: read bone scans, train and evaluate the two-view network, run reader studies."""


for _name in COMMAND_MODULES:
    importlib.import_module(f"{__name__}.{_name}").register(app, bench)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script."""
    try:
        app(args=argv, standalone_mode=True)
    except SystemExit as exit_:
        return int(exit_.code or 0) if isinstance(exit_.code, int) else 1
    except BoneScanError as error:
        print(f"bonescan: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # the machine's refusal (a full disk, no permission): which file and why, no traceback
        where = f"{error.filename}: " if error.filename is not None else ""
        print(f"bonescan: error: {where}{error.strerror or error}", file=sys.stderr)
        return 2
    return 0


def run() -> None:
    """Console-script wrapper: exit with main()'s status."""
    sys.exit(main())


if __name__ == "__main__":
    run()
