"""Distillation: the objective against closed forms and an exact Gaussian-mixture teacher, and
the runner's distillation mode (teacher's weights at the start, exact resume, the student's
sampling settings used by default)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

import diffkit
from diffkit import checkpoint as ckpt
from diffkit.config import resolve_config
from diffkit.distill import (
    ddim_target, distill, distillation_loss, load_teacher, next_times, student_config,
    student_times, substep_times, teacher_solution,
)
from diffkit.generate import SampleRequest, generate
from diffkit.gmm import GaussianMixture, random_directions
from diffkit.loading import load_for_sampling
from diffkit.runner import TrainingError, train
from diffkit.samplers import sample_ddim
from run_checks import assert_same_weights, final_weights, stop_at_step
from toy_domain import ToyDomain

DOMAIN = ToyDomain()
DOUBLE = torch.float64


class GaussianFlow(nn.Module):
    """The exact v of ``x_0 ~ N(0, c^2 I)``: ``E[x_0 | x_t] = a c^2 / (a^2 c^2 + s^2) x_t``."""

    def __init__(self, schedule, c: float):
        super().__init__()
        self.schedule, self.c = schedule, c

    def forward(self, x, t, cond=None):
        a, s = self.schedule.alpha(t.double())[:, None], self.schedule.std(t.double())[:, None]
        x0 = a * self.c**2 / (a**2 * self.c**2 + s**2) * x.double()
        eps = (x.double() - a * x0) / s
        return (a * eps - s * x0).to(x.dtype)


def test_the_teacher_solution_approaches_the_exact_flow_of_a_gaussian():
    # For x_0 ~ N(0, c^2) the probability-flow ODE maps x_t to x_s = sqrt(v_s / v_t) x_t with
    # v = a^2 c^2 + s^2: every noisy marginal is a scaled copy of the last.
    diffusion = diffkit.Diffusion("cosine", "v")
    schedule, c = diffusion.schedule, 0.5
    x_t = torch.randn(64, 3, generator=torch.Generator().manual_seed(0), dtype=DOUBLE)
    t, s = torch.full((64,), 0.8, dtype=DOUBLE), torch.full((64,), 0.3, dtype=DOUBLE)
    variance = lambda u: schedule.alpha(u) ** 2 * c**2 + schedule.std(u) ** 2  # noqa: E731
    exact = (variance(s) / variance(t)).sqrt()[:, None] * x_t
    flow = GaussianFlow(schedule, c)
    for sampler, order in (("ddim", 1), ("dpmpp_2m", 2)):
        errors = [float((teacher_solution(flow, diffusion, x_t, t, s, sampler=sampler, substeps=k) - exact).abs().max())
                  for k in (8, 16, 32)]
        # Twice the substeps divide a solver's error by 2^order.
        for coarse, fine in zip(errors, errors[1:]):
            assert 0.8 * 2**order < coarse / fine < 1.2 * 2**order
    assert errors[-1] < 1e-3


def test_the_ddim_target_makes_a_ddim_step_land_on_the_teacher():
    diffusion = diffkit.Diffusion("cosine", "v")
    schedule = diffusion.schedule
    generator = torch.Generator().manual_seed(1)
    x_t, x_s = (torch.randn(8, 2, generator=generator, dtype=DOUBLE) for _ in range(2))
    for t_value, s_value in ((0.9, 0.4), (0.25, 0.0)):
        t, s = torch.full((8,), t_value, dtype=DOUBLE), torch.full((8,), s_value, dtype=DOUBLE)
        target_x0, _ = ddim_target(diffusion, x_t, x_s, t, s)

        def model(x, time, cond=None):  # outputs the v whose clean-data estimate is target_x0
            a, std = schedule.alpha(time.double()), schedule.std(time.double())
            return diffkit.convert("x0", "v", target_x0, x, a, std)

        landed = sample_ddim(diffusion.denoiser(model), x_t, torch.tensor([t_value, s_value], dtype=DOUBLE))
        # The denoiser passes times in float32: 0.9 moves by ~1e-8, which moves the step by ~1e-7.
        torch.testing.assert_close(landed, x_s, rtol=0, atol=1e-6)


def test_a_guided_teacher_solves_with_the_guided_combination_of_its_outputs():
    diffusion = diffkit.Diffusion("cosine", "v")
    torch.manual_seed(0)
    net = ToyDomain().build_model({"model": {"hidden": 16}})
    cond, null = torch.tensor([0, 1, 2, 3]), torch.full((4,), 4)
    guided = lambda x, t, cond=None: -1.0 * net(x, t, null) + 2.0 * net(x, t, cond)  # noqa: E731
    x_t = torch.randn(4, 2, generator=torch.Generator().manual_seed(2))
    t, s = torch.full((4,), 0.75), torch.full((4,), 0.5)
    with torch.no_grad():
        by_guidance = teacher_solution(net, diffusion, x_t, t, s, cond=cond, guidance=2.0, uncond=null, substeps=3)
        by_hand = teacher_solution(guided, diffusion, x_t, t, s, cond=cond, substeps=3)
    torch.testing.assert_close(by_guidance, by_hand)


def test_the_student_times_are_the_sampling_times_and_each_steps_to_the_next():
    schedule = diffkit.CosineSchedule()
    times = student_times(diffkit.Diffusion("cosine"), 4, "uniform")
    torch.testing.assert_close(times, schedule.sample_times(4, "uniform"))
    torch.testing.assert_close(next_times(times, times[[2, 0, 3]]), times[[3, 1, 4]])
    with pytest.raises(ValueError, match="student's sampling times"):
        next_times(times, torch.tensor([0.6]))
    inner = substep_times(schedule, 0.5, 0.0, 4, "log_snr")
    assert inner[0] == 0.5 and inner[-1] == 0 and len(inner) == 5 and bool((inner.diff() < 0).all())


# -- an exact teacher: the student's few-step samples against the mixture itself -------------

class Residual(nn.Module):
    """The exact teacher plus a learned correction that starts at zero: a student that starts
    as the teacher, the way a network student starts from the teacher's weights."""

    def __init__(self, teacher: nn.Module, dim: int, hidden: int = 128):
        super().__init__()
        self.teacher = teacher
        self.net = nn.Sequential(nn.Linear(dim + 2, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                 nn.Linear(hidden, dim))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, x, t, cond=None):
        angle = t[:, None].float() * math.pi / 2
        return self.teacher(x, t) + self.net(torch.cat([x.float(), angle.cos(), angle.sin()], 1)).to(x.dtype)


def ring() -> GaussianMixture:
    angles = torch.arange(8) * 2 * math.pi / 8
    return GaussianMixture(torch.linspace(1, 3, 8), torch.stack([angles.cos(), angles.sin()], 1),
                           stds=torch.full((8,), 0.08))


def test_a_distilled_student_beats_the_teachers_samplers_at_the_same_number_of_calls():
    mixture, diffusion = ring(), diffkit.Diffusion("cosine", "v")
    teacher = mixture.denoiser(diffusion.schedule, "v")
    directions = random_directions(16, 2, torch.Generator().manual_seed(5))
    n, calls = 4000, 2
    distance = lambda x: float(mixture.sliced_wasserstein(x, directions))  # noqa: E731
    floor = torch.tensor([distance(mixture.sample(n, torch.Generator().manual_seed(k))) for k in range(5)])
    x_T = torch.randn(n, 2, generator=torch.Generator().manual_seed(7))

    def draw(model, sampler, spacing):
        return diffusion.sample(model, x_T.shape, sampler=sampler, steps=calls, spacing=spacing, x_T=x_T.clone())

    best_teacher = min(distance(draw(teacher, sampler, spacing))
                       for sampler in ("ddim", "dpmpp_2m", "unipc") for spacing in ("uniform", "auto"))

    torch.manual_seed(0)
    student = Residual(teacher, 2)
    optimizer = torch.optim.Adam(student.net.parameters(), lr=1e-3)
    times = student_times(diffusion.schedule, calls, "uniform")
    generator = torch.Generator().manual_seed(1)
    for _ in range(250):
        x0 = mixture.sample(256, generator).float()
        t = times[torch.randint(calls, (256,), generator=generator)]
        loss = distillation_loss(student, teacher, diffusion, x0, t=t, noise=torch.randn(256, 2, generator=generator),
                                 times=times, sampler="dpmpp_2m", substeps=4)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        distilled = distance(draw(student, "ddim", "uniform"))
    # Exact samples of the same size sit at floor.mean() (spread floor.std()): the student's gain
    # over the teacher's best sampler must be far above that noise.
    assert best_teacher - distilled > 10 * float(floor.std()) + float(floor.mean())
    assert distilled < 0.5 * best_teacher


# -- the runner's distillation mode -----------------------------------------------------------

@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("teacher")
    train(DOMAIN, resolve_config(DOMAIN, overrides={"train": {"steps": 60, "checkpoint_every": 60}}),
          out=folder, progress=False)
    return folder


def toy_student(teacher_run, student_steps: int = 2, **train_settings) -> dict:
    _, teacher_config, info = load_teacher(DOMAIN, teacher_run)
    return student_config(DOMAIN, teacher_config, info["source"], student_steps, overrides={"train": train_settings})


def test_the_student_starts_from_the_teachers_weights_and_records_its_teacher(teacher_run, tmp_path):
    config = toy_student(teacher_run, 3, steps=1, lr=0.0)
    distill(DOMAIN, config, out=tmp_path, progress=False)
    teacher, _ = load_for_sampling(DOMAIN, teacher_run)
    student = ckpt.load(ckpt.resolve(tmp_path))
    for key, value in teacher.state_dict().items():  # lr 0: the one step changed nothing
        torch.testing.assert_close(student["model"][key], value, rtol=0, atol=0)
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["teacher"]["path"] == str(ckpt.resolve(teacher_run).resolve()) and run["teacher"]["step"] == 60
    assert (student["config"]["sample"]["sampler"], student["config"]["sample"]["steps"]) == ("ddim", 3)


def test_an_interrupted_then_resumed_distillation_matches_an_uninterrupted_one(teacher_run, tmp_path, monkeypatch):
    config = toy_student(teacher_run, steps=16, checkpoint_every=5)
    distill(DOMAIN, config, out=tmp_path / "straight", progress=False)
    stop_at_step(12, lambda: distill(DOMAIN, config, out=tmp_path / "resumed", progress=False), monkeypatch)
    distill(DOMAIN, config, out=tmp_path / "resumed", resume=True, progress=False)
    straight, resumed = final_weights(tmp_path / "straight"), final_weights(tmp_path / "resumed")
    assert straight["step"] == 16
    assert_same_weights(straight, resumed, rtol=0, atol=0)
    # A distillation run is resumed as one, and a training run as one.
    with pytest.raises(TrainingError, match="written by `diffkit distill`"):
        train(DOMAIN, config, out=tmp_path / "resumed", resume=True, progress=False)


def test_sampling_a_student_uses_its_steps_by_default(teacher_run, tmp_path, toy_installed):
    distill(DOMAIN, toy_student(teacher_run, 3, steps=5), out=tmp_path / "run", progress=False)
    calls = []
    model, config = load_for_sampling(DOMAIN, tmp_path / "run")
    model.register_forward_pre_hook(lambda module, args: calls.append(float(args[1][0])))
    generate(DOMAIN, model, config, SampleRequest(n=4, seed=0))
    torch.testing.assert_close(torch.tensor(calls), diffkit.CosineSchedule().sample_times(3, "uniform")[:-1])
    # The pipeline and an exported folder keep the student's sampling settings.
    pipe = diffkit.load(tmp_path / "run", device="cpu")
    folder = pipe.save_pretrained(tmp_path / "exported")
    assert diffkit.load(folder, device="cpu").config["sample"] == config["sample"]
    torch.testing.assert_close(torch.stack(pipe.sample(4, seed=0)),
                               generate(DOMAIN, model, config, SampleRequest(n=4, seed=0))["x"])


def test_a_student_keeps_the_teachers_network_and_samples_with_ddim(teacher_run):
    teacher_config = load_teacher(DOMAIN, teacher_run)[1]
    with pytest.raises(ValueError, match="keeps the teacher's 'model' settings"):
        student_config(DOMAIN, teacher_config, "toy", 2, sets=["model.hidden=32"])
    with pytest.raises(ValueError, match="sample.sampler must be one of ddim, euler"):
        student_config(DOMAIN, teacher_config, "toy", 2, sets=["sample.sampler=dpmpp_2m"])


def test_a_categorical_model_is_refused_with_the_reason(tmp_path):
    from toy_categorical import ToyCategoricalDomain

    domain = ToyCategoricalDomain()
    train(domain, resolve_config(domain, overrides={"train": {"steps": 2, "checkpoint_every": 2}}), out=tmp_path,
          progress=False)
    _, teacher_config, info = load_teacher(domain, tmp_path)
    with pytest.raises(ValueError, match="a categorical process cannot be distilled"):
        student_config(domain, teacher_config, info["source"], 2)
