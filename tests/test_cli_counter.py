"""The done/total counter: rewritten in place on a terminal, a line per tenth in a log."""

import io

from bonescan.cli.counter import done_counter


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_log_gets_the_first_count_and_a_line_per_tenth():
    log = io.StringIO()
    progress = done_counter("patients", log)
    for done in range(1, 601):
        progress(done, 600)
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue()
    assert lines == ["1/600 patients"] + [f"{60 * k}/600 patients" for k in range(1, 11)]


def test_short_run_in_a_log_prints_every_count():
    log = io.StringIO()
    progress = done_counter("studies", log)
    for done in range(1, 4):
        progress(done, 3)
    assert log.getvalue().splitlines() == ["1/3 studies", "2/3 studies", "3/3 studies"]


def test_terminal_rewrites_the_count_in_place_and_ends_the_line():
    terminal = Terminal()
    progress = done_counter("studies", terminal)
    for done in range(1, 4):
        progress(done, 3)
    assert terminal.getvalue() == "\r1/3 studies\r2/3 studies\r3/3 studies\n"
