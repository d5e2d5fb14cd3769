"""`python -m bonescan` runs the command-line interface."""

from bonescan.cli import run

run()
