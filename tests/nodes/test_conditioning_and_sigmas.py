import pytest
import torch

from nodes.conditioning import (ConditioningCombine, ConditioningConcat, ConditioningSetArea,
                                ConditioningSetTimestepRange, ConditioningZeroOut)
from nodes.sigmas import (AlignYourStepsScheduler, ExponentialScheduler, KarrasScheduler, SplitSigmas,
                          SplitSigmasDenoise)


def _cond(value: float = 1.0, tokens: int = 77):
    return [[torch.full((1, tokens, 8), value), {"pooled_output": torch.full((1, 4), value), "width": 64}]]


def test_zero_out_keeps_options_and_shapes(call) -> None:
    cond = _cond()
    (out,) = call(ConditioningZeroOut, conditioning=cond)
    assert torch.all(out[0][0] == 0) and out[0][0].shape == (1, 77, 8)
    assert torch.all(out[0][1]["pooled_output"] == 0) and out[0][1]["width"] == 64
    assert torch.all(cond[0][0] == 1)  # the input is not modified


def test_combine_concat(call) -> None:
    (both,) = call(ConditioningCombine, conditioning_1=_cond(1), conditioning_2=_cond(2))
    assert len(both) == 2 and float(both[1][0][0, 0, 0]) == 2
    (cat,) = call(ConditioningConcat, conditioning_to=_cond(1), conditioning_from=_cond(2, tokens=154))
    assert cat[0][0].shape == (1, 231, 8)
    assert float(cat[0][0][0, 0, 0]) == 1 and float(cat[0][0][0, 100, 0]) == 2
    assert float(cat[0][1]["pooled_output"][0, 0]) == 1  # options stay those of conditioning_to


def test_timestep_range_and_area(call) -> None:
    (ranged,) = call(ConditioningSetTimestepRange, conditioning=_cond(), start=0.2, end=0.8)
    assert (ranged[0][1]["start_percent"], ranged[0][1]["end_percent"]) == (0.2, 0.8)
    (area,) = call(ConditioningSetArea, conditioning=_cond(), width=256, height=128, x=64, y=32, strength=0.5)
    assert area[0][1]["area"] == (16, 32, 4, 8) and area[0][1]["strength"] == 0.5
    assert area[0][1]["set_area_to_bounds"] is False


def test_closed_form_schedulers(call) -> None:
    (karras,) = call(KarrasScheduler, steps=10, sigma_max=14.614642, sigma_min=0.0291675, rho=7.0)
    assert karras.shape == (11,) and float(karras[-1]) == 0
    assert karras[:4].tolist() == pytest.approx([14.6146, 9.1029, 5.4784, 3.1686], abs=1e-3)
    (expo,) = call(ExponentialScheduler, steps=4, sigma_max=10.0, sigma_min=0.1)
    assert expo.tolist() == pytest.approx([10.0, 2.15443, 0.464159, 0.1, 0.0], rel=1e-4)


def test_align_your_steps_and_splits(call) -> None:
    (ays,) = call(AlignYourStepsScheduler, model_type="SDXL", steps=10, denoise=1.0)
    assert ays.tolist()[:3] == pytest.approx([14.6146412293, 6.3184485287, 3.7681790315], rel=1e-5)
    assert float(ays[-1]) == 0
    (half,) = call(AlignYourStepsScheduler, model_type="SDXL", steps=10, denoise=0.5)
    assert torch.equal(half, ays[-6:])
    high, low = call(SplitSigmas, sigmas=ays, step=3)
    assert torch.equal(high, ays[:4]) and torch.equal(low, ays[3:])
    high, low = call(SplitSigmasDenoise, sigmas=ays, denoise=0.3)
    assert torch.equal(low, ays[-4:]) and torch.equal(high, ays[:8])
