"""The broad prior's noise: what a task's parameters say its noise is, the data show."""

import math

import torch

from model.data.broad import BroadPrior

# Signal far below the noise, so y is the noise alone (up to a 1e-3 relative part).
NOISE_ONLY = dict(amplitude_range=(1e-3, 1.1e-3), noise_ratio_range=(1000.0, 1000.1), p_student_t=0.0)


def test_heteroscedastic_noise_is_whitened_by_the_scale_the_task_reports() -> None:
    prior = BroadPrior(**NOISE_ONLY, p_hetero=1.0, het_scale_range=(1.0, 1.2))
    batch = prior.sample(64, 150, 150, torch.Generator().manual_seed(0))
    x, y = torch.cat([batch.xc, batch.xt], 1), torch.cat([batch.yc, batch.yt], 1).squeeze(-1).double()
    scale = batch.noise_scale(x)  # [B, n]
    z = y / scale
    # 19,200 standard normals: the variance is 1 within 5 standard errors (se = sqrt(2 / n) = 0.0102).
    assert abs(z.square().mean().item() - 1.0) < 5 * math.sqrt(2 / z.numel())
    # The scale really varies within a task (log-sd 1-1.2): dividing by the task's constant noise
    # level instead leaves points far off unit variance on the loud and quiet ends.
    log_ratio = (scale.log() - batch.params["noise"].log().unsqueeze(1)).std(1)
    assert log_ratio.median().item() > 0.6
    loud = scale > scale.median(1, keepdim=True).values
    assert (y[loud].square().mean() / y[~loud].square().mean()).item() > 3.0
    assert not batch.oracle_exact.any()


def test_homoscedastic_tasks_have_one_noise_scale_and_an_exact_oracle() -> None:
    prior = BroadPrior(**NOISE_ONLY, p_hetero=0.0)
    batch = prior.sample(32, 100, 20, torch.Generator().manual_seed(1))
    scale = batch.noise_scale(batch.xc)
    assert torch.equal(scale, batch.params["noise"].unsqueeze(1).expand_as(scale))
    z = batch.yc.squeeze(-1).double() / scale
    assert abs(z.square().mean().item() - 1.0) < 5 * math.sqrt(2 / z.numel())
    assert batch.oracle_exact.all()


def test_the_default_prior_mixes_noise_kinds_in_the_stated_shares() -> None:
    params = BroadPrior().sample_params(20_000, torch.Generator().manual_seed(2))
    for key, share in (("hetero", BroadPrior.p_hetero), ("student_t", BroadPrior.p_student_t)):
        observed = params[key].double().mean().item()
        assert abs(observed - share) < 5 * math.sqrt(share * (1 - share) / 20_000), key


def test_families_follow_each_task_s_kernel() -> None:
    batch = BroadPrior().sample(400, 3, 2, torch.Generator().manual_seed(3))
    p, families = batch.params, batch.families()
    assert set(families) == {"periodic", "rough", "smooth"}
    for i, family in enumerate(families):
        periodic = float(p["weights"][i, 1]) > 0 or bool(p["per_multiplies"][i])
        rough = float(p["length"][i]) < 0.15
        assert family == ("periodic" if periodic else "rough" if rough else "smooth"), i


def test_fresh_readings_are_the_task_s_function_plus_its_own_noise() -> None:
    # What bench.calibration_monitor judges "fine" sessions by: many readings of the same function
    # values with new noise. Standardised by each task's noise scale, the readings and the batch's
    # own targets (read at sampling time) must both follow the task's noise law: N(0, 1), or
    # Student-t with the task's dof (scipy's, an independent implementation).
    from scipy import stats

    batch = BroadPrior(p_student_t=0.5).sample(64, 10, 40, torch.Generator().manual_seed(2))
    readings = batch.readings(50, torch.Generator().manual_seed(3))  # [B, 40, 50]
    scale = batch.noise_scale(batch.xt).unsqueeze(-1)  # [B, 40, 1]
    fresh = (readings - batch.ft) / scale
    drawn = (batch.yt.double() - batch.ft) / scale
    dof = batch.params["dof"]
    for task_dof in [None, *sorted(set(dof[batch.student_t].tolist()))]:
        tasks = ~batch.student_t if task_dof is None else batch.student_t & (dof == task_dof)
        law = stats.norm() if task_dof is None else stats.t(task_dof)
        assert stats.kstest(fresh[tasks].flatten().numpy(), law.cdf).pvalue > 1e-3, task_dof
        assert stats.kstest(drawn[tasks].flatten().numpy(), law.cdf).pvalue > 1e-3, task_dof
    # New noise, not the old: the readings are independent of the targets drawn with the batch.
    assert abs(torch.corrcoef(torch.stack([fresh[..., 0].flatten(), drawn.flatten()]))[0, 1].item()) < 0.05
