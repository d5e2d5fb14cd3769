"""`python -m bonescan` runs the command-line interface."""

from bonescan.cli import run

if __name__ == "__main__":  # reader processes started by forkserver or spawn import this module again
    run()
