"""The demo's and benchmarks' generated case: one claim per IIN, as the intake requires."""

from __future__ import annotations

import datetime as dt

from claims.validators import validate_iin
from cli import demo_data


def test_generated_iins_are_unique_even_when_birth_dates_collide(monkeypatch):
    real = demo_data.make_iin
    drawn: list[str] = []

    def crowded(born, sex, serial=0):
        # everyone born on one day: random serials must collide (birthday paradox)
        iin = real(dt.date(1980, 1, 1), sex, serial)
        drawn.append(iin)
        return iin

    monkeypatch.setattr(demo_data, "make_iin", crowded)
    data = demo_data.generate(400, seed=7)
    iins = [v.iin for v in data.victims]
    assert len(set(iins)) == len(iins) == 400
    assert len(drawn) > 400  # collisions happened and were drawn again
    for v in data.victims:
        validate_iin(v.iin)
