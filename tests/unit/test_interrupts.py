"""Interrupts: what counts as one, and signals recorded instead of acted on."""

from __future__ import annotations

import os
import signal

from vzpkg import interrupts


def test_an_interrupt_wrapped_by_python_is_still_one() -> None:
    try:
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt as inner:
            raise RuntimeError("Error calling __set_name__") from inner
    except RuntimeError as wrapped:
        assert interrupts.caused_by_interrupt(wrapped)
    assert interrupts.caused_by_interrupt(interrupts.Terminated())
    assert not interrupts.caused_by_interrupt(RuntimeError("a real bug"))


def test_signals_from_the_point_of_no_return_on_are_recorded() -> None:
    before = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, interrupts.raise_terminated)
    try:
        with interrupts.deferrable() as begin:
            begin()
            os.kill(os.getpid(), signal.SIGTERM)  # recorded, not raised
        assert signal.getsignal(signal.SIGTERM) is interrupts.raise_terminated
    finally:
        signal.signal(signal.SIGTERM, before)
