"""The table of registered methods that drives the contract tests (after torch's ``optim_db``).

One entry per registered method: the hyperparameters of its quadratic run, the variants its
replay/resume must cover (each profile, mask, update rule...), the bad inputs it must refuse in one
line, and capability flags.  A method registered without an entry here fails
``test_every_registered_method_has_an_entry``, so a new method cannot skip the contract.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass(frozen=True)
class MethodInfo:
    name: str
    quadratic: dict = field(default_factory=lambda: {"lr": 0.05, "eps": 1e-3})  # 10-D quadratic, 300 steps
    variants: tuple[dict, ...] = ({},)  # replay/resume run with each of these (lr 5e-2, wd 0.1, seed 4)
    errors: tuple[tuple[dict, str], ...] = ()  # (kwargs, regex of the one-line error)
    has_direction: bool = True  # takes direction=gaussian|rademacher|pool
    forwards: int = 2  # forward passes per step at the defaults


COMMON_ERRORS = (({"lr": -1.0}, r"lr=-1.0 is invalid"), ({"lr": math.inf}, r"lr=inf is invalid"),
                 ({"eps": 0.0}, r"eps=0.0 is invalid"), ({"weight_decay": -0.1}, r"weight_decay=-0.1 is invalid"),
                 ({"chunk_size": 16}, r"chunk_size=16 is invalid"), ({"epsilon": 1.0}, r"unknown option 'epsilon'"))

METHODS = {m.name: m for m in [
    MethodInfo("mezo", errors=(({"direction": "sobol"}, r"direction='sobol' is invalid"),)),
    MethodInfo("sparse-mezo",
               variants=({"mask": "magnitude", "sparsity": 0.6, "threshold_every": 3},
                         {"mask": "random", "sparsity": 0.6}),
               errors=((dict(sparsity=1.0), r"sparsity=1.0 is invalid"),
                       (dict(sparsity=-0.1), r"sparsity=-0.1 is invalid"),
                       (dict(mask="topk"), r"mask='topk' is invalid"),
                       (dict(masked="rows"), r"masked='rows' is invalid"),
                       (dict(threshold_every=0), r"threshold_every=0 is invalid"),
                       (dict(chunk_size=1025), r"chunk_size=1025 is invalid"),
                       (dict(density=0.2), r"unknown option 'density'"))),
    MethodInfo("curvzo",
               variants=({"profile": "paper", "budget_every": 3}, {"profile": "port", "budget_every": 3},
                         {"profile": "contrast", "budget_every": 3}),
               errors=((dict(profile="fisher"), r"profile='fisher' is invalid"),
                       (dict(init_budget=0.9), r"init_budget=0.9 must lie in \[budget_min=0.1, budget_max=0.8\]"),
                       (dict(budget_min=0.5, budget_max=0.3, init_budget=0.4), r"init_budget=0.4 must lie in"),
                       (dict(init_budget=0.0), r"init_budget=0.0 is invalid"),
                       (dict(score_ema=0.0), r"score_ema=0.0 is invalid"),
                       (dict(pi_floor=0.2), r"pi_floor=0.2 exceeds budget_min=0.1"),
                       (dict(budget_every=0), r"budget_every=0 is invalid"),
                       (dict(budget=0.4), r"unknown option 'budget'"))),
    MethodInfo("loren", has_direction=False, forwards=6,
               variants=({"update": "per_query", "lr_cov": 0.5}, {"update": "per_step", "lr_cov": 0.5}),
               errors=(({"num_queries": 1}, r"num_queries=1 is invalid"), ({"damping": 0.0}, r"damping=0.0 is invalid"),
                       ({"momentum": 1.0}, r"momentum=1.0 is invalid"),
                       ({"lr_cov": -1e-3}, r"lr_cov=-0.001 is invalid"),
                       ({"a_init": -1.0}, r"a_init=-1.0 is invalid"),
                       ({"update": "per_batch"}, r"update='per_batch' is invalid"),
                       ({"direction": "rademacher"}, r"unknown option 'direction'"))),
    MethodInfo("zo-finetuner", errors=(({"embedding_pattern": "("}, r"embedding_pattern='\(' is not a regex"),
                                       ({"policy": "/no/such/policy"}, r"/no/such/policy"))),
    MethodInfo("fzoo", quadratic={"lr": 0.02, "eps": 1e-3}, forwards=9,
               variants=({"num_directions": 4}, {"num_directions": 2, "direction": "gaussian"}),
               errors=(({"num_directions": 1}, r"num_directions=1 is invalid"),
                       ({"direction": "sobol"}, r"direction='sobol' is invalid"),
                       ({"K": 8}, r"unknown option 'K'"))),
    MethodInfo("hizoo", quadratic={"lr": 0.05, "eps": 1e-3, "hessian_smooth": 1e-2}, has_direction=False, forwards=3,
               variants=({"hessian_smooth": 1e-2}, {"hessian_smooth": 0.0}),
               errors=(({"hessian_smooth": 1.0}, r"hessian_smooth=1.0 is invalid"),
                       ({"hessian_smooth": -1e-8}, r"hessian_smooth=-1e-08 is invalid"),
                       ({"direction": "gaussian"}, r"unknown option 'direction'"))),
    MethodInfo("lozo", has_direction=False,
               variants=({"rank": 2, "step_interval": 3}, {"rank": 1, "step_interval": 2, "scale_by_rank": True},
                         {"rank": 2, "step_interval": 3, "momentum": 0.7}),
               errors=(({"rank": 0}, r"rank=0 is invalid"), ({"step_interval": 0}, r"step_interval=0 is invalid"),
                       ({"momentum": 1.0}, r"momentum=1.0 is invalid"),
                       ({"momentum": -0.5}, r"momentum=-0.5 is invalid"),
                       ({"scale_by_rank": "maybe"}, r"scale_by_rank='maybe' is invalid"),
                       ({"r": 2}, r"unknown option 'r'"))),
    MethodInfo("zo-muon", has_direction=False, forwards=5,
               variants=({"rank": 4, "step_interval": 3}, {"rank": 2, "num_queries": 2, "ortho": "muon_svd"},
                         {"rank": 3, "estimator": "central", "num_queries": 1, "ortho": "none", "vector_lr_scale": 0.1}),
               errors=(({"rank": 0}, r"rank=0 is invalid"), ({"step_interval": 0}, r"step_interval=0 is invalid"),
                       ({"num_queries": 0}, r"num_queries=0 is invalid"),
                       ({"estimator": "backward"}, r"estimator='backward' is invalid"),
                       ({"ortho": "polar"}, r"ortho='polar' is invalid"),
                       ({"vector_lr_scale": -1.0}, r"vector_lr_scale=-1.0 is invalid"),
                       ({"direction": "gaussian"}, r"unknown option 'direction'"))),
]}
