"""Progress in logs: where no live bar can show (a file, a pipe), plain lines report it."""

from __future__ import annotations

import io
import re

from emovec.progress import count_progress, duration, request_progress


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_plain_lines_report_share_counts_elapsed_and_time_left():
    stream, clock = io.StringIO(), FakeClock()
    with count_progress(3400, "extracting", "texts", stream=stream, clock=clock) as advance:
        for _ in range(34):  # 100 texts every 4 s: a line at the first step after each 10 s
            clock.now += 4
            advance(100)
    lines = stream.getvalue().splitlines()
    assert lines[0] == "extracting: starting (3400 texts)"
    assert "extracting: 35% (1200/3400 texts), 48s elapsed, ~1m28s left" in lines
    assert lines[-1] == "extracting: done, 3400/3400 texts in 2m16s"
    periodic = [x for x in lines if re.fullmatch(r"extracting: \d+% .* left", x)]
    assert len(periodic) == 11  # every 12 s (the first step after 10 s), not every step


def test_quick_steps_do_not_flood_the_log_and_extra_fields_show():
    stream, clock = io.StringIO(), FakeClock()
    with request_progress(10, "writing stories", stream=stream, clock=clock) as advance:
        for _ in range(10):
            clock.now += 0.1
            advance(1, 3, 4)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2  # the start and the end only: the whole job took a second
    assert lines[-1] == "writing stories: done, 10/10 requests, accepted 75% in 1s"


def test_disabled_progress_prints_nothing():
    stream = io.StringIO()
    with count_progress(5, "quiet", enabled=False, stream=stream) as advance:
        advance(5)
    assert stream.getvalue() == ""


def test_durations_are_short():
    assert [duration(s) for s in (0.4, 45, 130, 3900)] == ["0s", "45s", "2m10s", "1h05m"]


def test_the_main_jobs_steering_check_reports_progress_in_a_log(lm, vectors, capsys):
    from emovec.experiments.steering_sentiment import steering_sentiment

    steering_sentiment(
        lm, vectors, prompts=["Hi."], samples_per_prompt=1, max_new_tokens=2, progress=True
    )
    err = capsys.readouterr().err  # captured: not a terminal, so plain lines
    assert "steering check: starting (3 conditions)" in err
    assert "steering check: done, 3/3 conditions in" in err
