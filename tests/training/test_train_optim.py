"""The per-step LR schedule: the same LRs as torch's LambdaLR, groups added mid-run, resume."""

from __future__ import annotations

import pytest
import torch

from tuneforge.training.optim import LRSchedule, build_optimizer, warmup_factor, warmup_steps


def _groups(*lrs: float) -> list[dict]:
    return [{"params": [torch.nn.Parameter(torch.zeros(2))], "lr": lr} for lr in lrs]


def test_schedule_sets_the_lrs_lambdalr_sets():
    factor = warmup_factor(3, 20, "cosine")
    ours = build_optimizer(_groups(1e-3, 5e-4), 1e-3, (0.9, 0.999), 1e-8)
    theirs = torch.optim.AdamW(_groups(1e-3, 5e-4), lr=1e-3)
    schedule, reference = (
        LRSchedule(ours, factor),
        torch.optim.lr_scheduler.LambdaLR(theirs, factor),
    )
    for _ in range(20):
        assert [g["lr"] for g in ours.param_groups] == [g["lr"] for g in theirs.param_groups]
        ours.step()
        schedule.step()
        theirs.step()
        reference.step()


def test_an_added_group_follows_the_schedule_from_its_own_base_lr():
    factor = warmup_factor(0, 10, "linear")
    opt = build_optimizer(_groups(1e-3), 1e-3, (0.9, 0.999), 1e-8)
    schedule = LRSchedule(opt, factor)
    for _ in range(4):
        schedule.step()
    schedule.add_param_group(_groups(2e-3)[0])
    assert opt.param_groups[1]["initial_lr"] == 2e-3
    assert opt.param_groups[1]["lr"] == pytest.approx(2e-3 * factor(4))
    schedule.step()
    assert [g["lr"] for g in opt.param_groups] == [1e-3 * factor(5), 2e-3 * factor(5)]


def test_state_dict_restores_the_step_and_reads_lambdalr_checkpoints():
    factor = warmup_factor(2, 10, "cosine")
    opt = build_optimizer(_groups(1e-3), 1e-3, (0.9, 0.999), 1e-8)
    schedule = LRSchedule(opt, factor)
    for _ in range(6):
        schedule.step()
    fresh = LRSchedule(build_optimizer(_groups(1e-3), 1e-3, (0.9, 0.999), 1e-8), factor)
    fresh.load_state_dict(schedule.state_dict())
    assert fresh.optimizer.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
    old = torch.optim.lr_scheduler.LambdaLR(torch.optim.AdamW(_groups(1e-3)), factor)
    for _ in range(6):
        old.step()
    fresh.load_state_dict(old.state_dict())
    assert fresh.last_step == 6


def test_warmup_steps_is_a_fraction_or_a_count():
    assert warmup_steps(0.1, 50) == 5 and warmup_steps(3, 50) == 3 and warmup_steps(0, 50) == 0
