"""segkit.tasks.schedulers: rates at chosen steps against the closed forms (and PyTorch's own
schedulers where one exists); one warm-up rule for every per-step schedule."""

import math

import pytest
import torch

from segkit.tasks.schedulers import (
    cosine_lr,
    exponential_lr,
    multistep_lr,
    poly_lr,
    set_total_steps,
)

BASE = 0.1


def optimizer(*rates: float) -> torch.optim.SGD:
    groups = [{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": r} for r in rates]
    return torch.optim.SGD(groups, lr=BASE)


def rates(build, total: int, *group_rates: float, **kwargs) -> list[list[float]]:
    """Per step ``0..total`` the rate of each group, stepping the schedule as training does."""
    opt = optimizer(*(group_rates or (BASE,)))
    schedule = build(opt, total, **kwargs)
    seen = []
    for _ in range(total + 1):
        seen.append([g["lr"] for g in opt.param_groups])
        opt.step()
        schedule.step()
    return seen


def warm(step: int, steps: int, factor: float) -> float:
    """The documented warm-up rule, written out."""
    return factor + (1 - factor) * step / steps if step < steps else 1.0


def test_poly_with_min_lr_and_warm_up_closed_form():
    lr = rates(poly_lr, 100, power=0.9, min_lr=0.001, warmup_steps=10, warmup_factor=0.01)

    def poly(s):
        return 0.001 + (BASE - 0.001) * (1 - s / 100) ** 0.9

    assert lr[0][0] == pytest.approx(0.01 * poly(0))
    assert lr[5][0] == pytest.approx((0.01 + 0.99 * 0.5) * poly(5))
    assert lr[10][0] == pytest.approx(0.001 + 0.099 * 0.9**0.9)
    assert lr[60][0] == pytest.approx(0.001 + 0.099 * 0.4**0.9)
    assert lr[100][0] == pytest.approx(0.001)


def test_cosine_with_min_lr_and_warm_up_closed_form():
    lr = rates(cosine_lr, 100, min_lr=0.002, warmup_steps=20, warmup_factor=0.0)

    def cosine(s):
        return 0.002 + (BASE - 0.002) * (1 + math.cos(math.pi * s / 100)) / 2

    assert lr[0][0] == 0.0
    assert lr[10][0] == pytest.approx(0.5 * cosine(10))
    # the decay spans the whole run, warm-up included: half-way at step 50
    assert lr[50][0] == pytest.approx((0.002 + BASE) / 2)
    assert lr[100][0] == pytest.approx(0.002)


def test_cosine_restarts_match_pytorch_warm_restarts():
    # 70 steps, 2 restarts, cycles x2: 10 + 20 + 40, i.e. T_0=10, T_mult=2
    lr = rates(cosine_lr, 70, min_lr=0.01, restarts=2, cycle_mult=2.0)
    reference_opt = optimizer(BASE)
    reference = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(
        reference_opt, T_0=10, T_mult=2, eta_min=0.01
    )
    for step in range(70):
        assert lr[step][0] == pytest.approx(reference_opt.param_groups[0]["lr"], abs=1e-12), step
        reference_opt.step()
        reference.step()
    assert lr[10][0] == lr[30][0] == pytest.approx(BASE)  # restarts at the base rate


def test_cosine_restarts_with_fractional_cycle_mult_closed_form():
    # 100 steps, 1 restart, x1.5: cycles of 40 and 60 steps
    lr = rates(cosine_lr, 100, restarts=1, cycle_mult=1.5)
    assert lr[20][0] == pytest.approx(BASE / 2)
    assert lr[39][0] == pytest.approx(BASE * (1 + math.cos(math.pi * 39 / 40)) / 2)
    assert lr[40][0] == pytest.approx(BASE)
    assert lr[70][0] == pytest.approx(BASE / 2)
    assert lr[100][0] == pytest.approx(0.0, abs=1e-15)


def test_exponential_matches_pytorch_exponential_lr():
    lr = rates(exponential_lr, 50, end_factor=0.01)
    reference_opt = optimizer(BASE)
    reference = torch.optim.lr_scheduler.ExponentialLR(reference_opt, gamma=0.01 ** (1 / 50))
    for step in range(51):
        assert lr[step][0] == pytest.approx(reference_opt.param_groups[0]["lr"], rel=1e-9)
        reference_opt.step()
        reference.step()
    assert lr[25][0] == pytest.approx(BASE * 0.1) and lr[50][0] == pytest.approx(BASE * 0.01)


@pytest.mark.parametrize(
    ("build", "kwargs"),
    [
        (poly_lr, {"min_lr": 0.01}),
        (cosine_lr, {"restarts": 1}),
        (exponential_lr, {"end_factor": 0.1}),
        (multistep_lr, {"milestones": [0.05, 0.5]}),  # a drop inside the warm-up too
    ],
    ids=["poly", "cosine", "exponential", "multistep"],
)
def test_every_schedule_shares_one_warm_up_rule(build, kwargs):
    plain = rates(build, 40, **kwargs, warmup_steps=0)
    warmed = rates(build, 40, **kwargs, warmup_steps=8, warmup_factor=0.1)
    for step in range(41):  # warm(s) x the schedule without warm-up, over the same span
        assert warmed[step][0] == pytest.approx(warm(step, 8, 0.1) * plain[step][0]), step


def test_min_lr_is_where_every_param_group_ends():
    lr = rates(poly_lr, 10, 0.1, 0.01, min_lr=0.001)
    assert lr[0] == pytest.approx([0.1, 0.01])
    assert lr[5] == pytest.approx([0.001 + 0.099 * 0.5**0.9, 0.001 + 0.009 * 0.5**0.9])
    assert lr[10] == pytest.approx([0.001, 0.001])
    with pytest.raises(ValueError, match=r"scheduler.min_lr=0.05 is above .* 0.01"):
        cosine_lr(optimizer(0.1, 0.01), 10, min_lr=0.05)


def test_a_new_run_length_gives_the_new_run_s_rate():
    for build, kwargs in [(cosine_lr, {"restarts": 1}), (exponential_lr, {})]:
        opt = optimizer(BASE)
        schedule = build(opt, 20, **kwargs)
        for _ in range(15):
            opt.step()
            schedule.step()
        assert set_total_steps(schedule, 40)
        assert opt.param_groups[0]["lr"] == pytest.approx(rates(build, 40, **kwargs)[15][0])


@pytest.mark.parametrize(
    ("build", "kwargs", "message"),
    [
        (poly_lr, {"warmup_factor": 2.0}, r"scheduler.warmup_factor must be in \[0, 1\]"),
        (poly_lr, {"warmup_steps": -1}, "scheduler.warmup_steps must be >= 0"),
        (cosine_lr, {"restarts": -1}, "scheduler.restarts must be >= 0"),
        (cosine_lr, {"cycle_mult": 0.0}, "scheduler.cycle_mult must be > 0"),
        (exponential_lr, {"end_factor": 0.0}, r"scheduler.end_factor must be in \(0, 1\]"),
    ],
)
def test_bad_arguments_name_the_key(build, kwargs, message):
    with pytest.raises(ValueError, match=message):
        build(optimizer(BASE), 10, **kwargs)
