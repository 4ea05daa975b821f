"""A generation's step reports, coalesced: fast steps (a tiny twin's take milliseconds) are reported at most once per
interval, yet the job always records its first step, its last, and the step it stopped at."""

from __future__ import annotations

from deployments.generator import StepReports


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def reports(interval_s: float = 0.2) -> tuple[StepReports, list[tuple[int, int]], Clock]:
    sent: list[tuple[int, int]] = []
    clock = Clock()
    return StepReports(lambda done, total: sent.append((done, total)), interval_s, clock), sent, clock


def test_fast_steps_are_reported_once_per_interval_and_the_last_always() -> None:
    r, sent, clock = reports()
    for done in range(1, 101):  # 100 steps of 10 ms: 1 s
        clock.now = done * 0.01
        r.step(done, 100, stopping=False)
    assert sent[0] == (1, 100) and sent[-1] == (100, 100)
    assert len(sent) == 6, sent  # steps 1, 21, 41, 61, 81 (every 0.2 s) and the last
    assert [d for d, _ in sent] == sorted(d for d, _ in sent)


def test_slow_steps_are_each_reported() -> None:
    r, sent, clock = reports()
    for done in range(1, 6):
        clock.now = done * 0.5
        r.step(done, 5, stopping=False)
    assert sent == [(d, 5) for d in range(1, 6)]


def test_the_step_a_stop_is_seen_at_is_reported_at_once() -> None:
    r, sent, clock = reports()
    for done in range(1, 4):
        clock.now = done * 0.01
        r.step(done, 100, stopping=done == 3)
    assert sent == [(1, 100), (3, 100)]


def test_a_generation_that_raises_still_records_its_last_step() -> None:
    r, sent, clock = reports()
    for done in range(1, 5):
        clock.now = done * 0.01
        r.step(done, 100, stopping=False)
    r.flush()
    r.flush()  # nothing held: nothing more
    assert sent == [(1, 100), (4, 100)]
