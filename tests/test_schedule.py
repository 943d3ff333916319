import math

import pytest

from microgpt.core.errors import ConfigError
from microgpt.core.schedule import WarmupCosine


def test_warmup_then_cosine_to_the_floor():
    s = WarmupCosine(peak_lr=1e-3, warmup_steps=10, decay_steps=110, init_lr=1e-5, end_lr=1e-4)
    assert s(0) == pytest.approx(1e-5)
    assert s(5) == pytest.approx(1e-5 + (1e-3 - 1e-5) * 0.5)
    assert s(10) == pytest.approx(1e-3)
    assert s(60) == pytest.approx(1e-4 + 0.5 * (1e-3 - 1e-4) * (1 + math.cos(math.pi * 0.5)))
    assert s(110) == pytest.approx(1e-4)
    assert s(10_000) == pytest.approx(1e-4)
    values = [s(i) for i in range(10, 111)]
    assert all(a >= b for a, b in zip(values, values[1:]))


@pytest.mark.parametrize("kwargs", [dict(peak_lr=0.0), dict(warmup_steps=20, decay_steps=10), dict(decay_steps=0)])
def test_bad_schedules(kwargs):
    with pytest.raises(ConfigError):
        WarmupCosine(**{"peak_lr": 1e-3, "warmup_steps": 1, "decay_steps": 10, **kwargs})
