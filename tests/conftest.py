"""Fixtures shared by test modules."""
import signal

import pytest


@pytest.fixture
def no_hang():
    """A test that blocks (e.g. on a FIFO) fails after 60 s instead of stopping the suite."""
    def timed_out(*_):
        raise TimeoutError("blocked for 60 s")

    previous = signal.signal(signal.SIGALRM, timed_out)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)
