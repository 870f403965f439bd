"""How far each PPO update moves the agent's mask distribution: SB3's train/approx_kl and entropy per update.

Runs one `rl` search with SB3's own logger printing to stdout, e.g.
`python bench/ppo_steps.py --model resnet20 --weights ../shared/models/resnet20-cifar10jpeg.pt
--data-dir ../shared/data/cifar10-jpeg.tar.gz --target-flops 0.3 --evaluations 200 --seed 1 --learning-rate 3e-3`
(the numbers in README's "Small PPO steps" came from such runs, at 3e-3 and 3e-4).
"""

from __future__ import annotations

import argparse

import torch
from stable_baselines3.common.logger import configure

import autoprune.agents.ppo as ppo_module
from autoprune.problem import ProblemConfig
from autoprune.search.config import SearchConfig
from autoprune.search.runner import run_search


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--weights", required=True)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--target-flops", type=float, default=0.3)
    parser.add_argument("--evaluations", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--learning-rate", type=float, default=SearchConfig.learning_rate)
    parser.add_argument("--out", default="bench/runs/ppo-steps")
    args = parser.parse_args()
    torch.set_num_threads(1)

    make_ppo = ppo_module.make_ppo

    def logged(*a, **k):
        ppo = make_ppo(*a, **k)
        ppo.set_logger(configure(None, ["stdout"]))  # approx_kl, entropy_loss (= -entropy), clip_fraction
        return ppo

    ppo_module.make_ppo = logged
    problem = ProblemConfig(model=args.model, weights=args.weights, dataset="cifar10", data_dir=args.data_dir)
    config = SearchConfig(problem=problem, target_flops=args.target_flops, evaluations=args.evaluations,
                          seed=args.seed, learning_rate=args.learning_rate, out=args.out)  # fmt: skip
    print(run_search(config, progress=False))


if __name__ == "__main__":
    main()
