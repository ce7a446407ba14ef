import gc

import pytest

from claims.gc_pause import gc_paused


def test_the_collector_is_off_inside_and_back_after():
    assert gc.isenabled()
    with gc_paused():
        assert not gc.isenabled()
        with gc_paused():  # nested: still off, and the outer block keeps it off
            assert not gc.isenabled()
        assert not gc.isenabled()
    assert gc.isenabled()


def test_an_error_inside_still_restores_the_collector():
    with pytest.raises(RuntimeError), gc_paused():
        raise RuntimeError("boom")
    assert gc.isenabled()


def test_a_collector_that_was_off_stays_off():
    gc.disable()
    try:
        with gc_paused():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_bulk_stages_run_without_the_collector():
    from claims import intake, ledger

    seen = []

    @gc_paused()
    def stage():
        seen.append(gc.isenabled())

    stage()
    stage()
    assert seen == [False, False] and gc.isenabled()
    # the bulk entry points are wrapped the same way
    assert ledger.run_import.__wrapped__ and intake.import_rows.__wrapped__
