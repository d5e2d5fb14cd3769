"""The bonescan command itself: version, help, and how refusals reach the user."""

from __future__ import annotations

import subprocess
import sys

import bonescan
from bonescan import cli
from bonescan.errors import NotABoneScanError


def test_version_flag_prints_package_version(capsys):
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"bonescan {bonescan.__version__}"


def test_unknown_command_is_a_usage_error():
    assert cli.main(["no-such-command"]) == 2


def run_raising(error: Exception) -> int:
    """The exit code of `bonescan` running a command that raises `error`."""
    @cli.app.command("raise-for-test")
    def _raise() -> None:
        raise error

    try:
        return cli.main(["raise-for-test"])
    finally:
        cli.app.registered_commands = [c for c in cli.app.registered_commands if c.name != "raise-for-test"]


def test_refusal_becomes_one_stderr_line_and_exit_code_2(capsys):
    assert run_raising(NotABoneScanError("thyroid.dcm", "256 x 256 is a static image, not a whole-body scan")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["bonescan: error: thyroid.dcm: 256 x 256 is a static image, not a whole-body scan"]


def test_the_machines_refusal_becomes_one_stderr_line_naming_the_file_and_exit_code_2(capsys):
    assert run_raising(PermissionError(13, "Permission denied", "/pacs/export/report.csv")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["bonescan: error: /pacs/export/report.csv: Permission denied"]


def test_console_script_runs_as_module():
    done = subprocess.run(
        [sys.executable, "-m", "bonescan", "--version"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert bonescan.__version__ in done.stdout
