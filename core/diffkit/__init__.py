"""diffkit: a multi-modal diffusion toolkit.

The core is domain-agnostic: noise schedules, the processes (Gaussian diffusion, flow matching and
categorical diffusion, under one contract, :class:`Process`; a state may mix them leaf by leaf), training losses, samplers, guidance and editing,
one training runner, the ``diffkit`` command line and the Python pipeline (``diffkit.load(name_or_path).sample(n, seed=0)``). Domains (images, audio,
molecules, your own) arrive as pluggy plugins.
"""

from .categorical import CategoricalDiffusion
from .categorical_samplers import CategoricalDenoiser
from .contract import Process, masked_mean
from .denoiser import Denoiser
from .diffusion import Diffusion
from .domain import Domain
from .flow import FlowMatching
from .guidance import drop_condition, inpaint, slerp
from .mixed import MixedProcess
from .process import convert, posterior, q_sample, to_eps, to_x0
from .samplers import SAMPLERS, get_sampler, register_sampler
from .schedules import (
    CosineSchedule,
    DiscreteSchedule,
    LinearSchedule,
    Schedule,
    SigmoidSchedule,
    ZeroTerminalSNR,
    make_schedule,
    register_schedule,
)
from .tree import (SampleGenerators, append_dims, draw_noise, draw_per_sample, draws_per_sample, gaussian_like,
                   tree_map)
from .plugins import hookimpl, make_plugin_manager
from .pipeline import Pipeline, load

__version__ = "0.1.0"

__all__ = [
    "CategoricalDenoiser", "CategoricalDiffusion", "CosineSchedule", "Denoiser", "Diffusion", "DiscreteSchedule",
    "Domain", "FlowMatching", "hookimpl", "make_plugin_manager", "LinearSchedule", "MixedProcess", "Pipeline", "Process", "SAMPLERS", "SampleGenerators",
    "Schedule", "SigmoidSchedule", "ZeroTerminalSNR", "append_dims", "convert", "draw_noise", "draw_per_sample",
    "draws_per_sample", "drop_condition", "gaussian_like", "get_sampler", "inpaint", "load", "make_schedule",
    "masked_mean", "posterior", "q_sample", "register_sampler", "register_schedule", "slerp", "to_eps", "to_x0", "tree_map",
]
