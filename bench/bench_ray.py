"""Candidate evaluations per second with 1 vs 2 Ray evaluation workers (not a test).

    python bench/bench_ray.py                       # digits CNN, and ResNet-20 where the shared CIFAR-10 files exist
    python bench/bench_ray.py --problems digits --steps 30

Three measurements per problem, each after a warm-up step that is not timed:

- env: `ChannelPruneEnv` stepped with random proposals, in this process (with 1 torch thread, and with one per
  core) and as a `RayVecEnv` of 1 and 2 actors (1 CPU and 1 torch thread each): pure evaluation throughput.
- search: `run_search` end to end (PPO updates included) with `--workers 1` (in-process, 1 thread and one per
  core) and `--workers 2`, timed from its metrics between the first and the last evaluation (Ray start-up and
  actor loading excluded).

Writes bench/results/ray_workers.md with the machine, date, load and numbers.
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from autoprune.constraints import Constraints
from autoprune.distributed.cluster import ensure_ray
from autoprune.distributed.vec_env import RayVecEnv, SearchEnvFactory
from autoprune.problem import ProblemConfig
from autoprune.search.config import SearchConfig
from autoprune.search.runner import run_search

SHARED = Path(__file__).resolve().parents[2] / "shared"
TARGET = Constraints(flops=0.5)


def problems(names: list[str]) -> dict[str, ProblemConfig]:
    """The problems to measure (ResNet-20 only where its trained weights and CIFAR-10 files are present)."""
    found = {"digits": ProblemConfig(device="cpu")}
    weights, data = SHARED / "models" / "resnet20-cifar10jpeg.pt", SHARED / "data" / "cifar10-jpeg.tar.gz"
    if weights.exists() and data.exists():
        found["resnet20"] = ProblemConfig(
            model="resnet20", weights=str(weights), dataset="cifar10", data_dir=str(data), eval_samples=500,
            device="cpu",
        )  # fmt: skip
    return {n: found[n] for n in names if n in found}


def env_rate(problem: ProblemConfig, workers: int, steps: int, threads: int = 1) -> float:
    """Evaluations per second of random proposals: in-process with `threads` when `workers` is 0, else Ray."""
    factory = SearchEnvFactory(problem, TARGET)
    rng = np.random.default_rng(0)
    if workers == 0:
        torch.set_num_threads(threads)
        env = factory()
        env.reset(seed=0)
        n = env.action_space.n

        def step() -> None:
            if env.step(rng.integers(0, 2, n))[2]:
                env.reset()

        step()
        start = time.perf_counter()
        for _ in range(steps):
            step()
        return steps / (time.perf_counter() - start)
    vec = RayVecEnv([factory] * workers)
    try:
        vec.seed(0)
        vec.reset()
        n = vec.action_space.n
        vec.step(rng.integers(0, 2, (workers, n)))
        start = time.perf_counter()
        for _ in range(steps):
            vec.step(rng.integers(0, 2, (workers, n)))
        return steps * workers / (time.perf_counter() - start)
    finally:
        vec.close()


def search_rate(problem: ProblemConfig, workers: int, evaluations: int, root: Path, threads: int = 1) -> float:
    """Evaluations per second of a whole search (PPO included), between its first and last evaluation."""
    torch.set_num_threads(threads)  # the driver's: evaluations in-process, PPO updates either way
    out = root / f"search-{workers}-{threads}"
    config = SearchConfig(problem=problem, evaluations=evaluations, rollout=8, workers=workers, out=str(out))
    run_search(config, progress=False)
    with open(out / "metrics.csv", newline="") as f:
        seconds = [float(r["seconds"]) for r in csv.DictReader(f)]
    return (len(seconds) - 1) / (seconds[-1] - seconds[0])


def machine() -> str:
    lines = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), "?")
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    import ray

    return (
        f"{os.cpu_count()} cores ({cpu}), {memory:.0f} GiB, no GPU used; Python {platform.python_version()}, "
        f"torch {torch.__version__}, Ray {ray.__version__}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", default="digits,resnet20", help="comma-separated: digits, resnet20")
    parser.add_argument("--steps", type=int, default=20, help="timed env steps per setting")
    parser.add_argument("--evaluations", type=int, default=40, help="evaluations of each timed search")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "ray_workers.md")
    args = parser.parse_args()

    load_before = os.getloadavg()
    started = time.strftime("%Y-%m-%d %H:%M %Z")
    assert ensure_ray(num_cpus=2)
    cores = os.cpu_count() or 1
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, problem in problems(args.problems.split(",")).items():
            steps = args.steps if name == "digits" else max(4, args.steps // 2)
            evaluations = args.evaluations if name == "digits" else max(10, args.evaluations // 2)
            env = {
                "in-process 1 thread": env_rate(problem, 0, steps, threads=1),
                f"in-process {cores} threads": env_rate(problem, 0, steps, threads=cores),
                "Ray x1": env_rate(problem, 1, steps),
                "Ray x2": env_rate(problem, 2, steps),
            }
            search = {
                "--workers 1, 1 thread": search_rate(problem, 1, evaluations, Path(tmp) / name, threads=1),
                f"--workers 1, {cores} threads": search_rate(problem, 1, evaluations, Path(tmp) / name, threads=cores),
                "--workers 2": search_rate(problem, 2, evaluations, Path(tmp) / name, threads=1),
            }
            rows.append((name, problem, env, search))
            print(name, env, search, flush=True)
    load_after = os.getloadavg()

    lines = [
        "# Ray evaluation workers: candidate evaluations per second",
        "",
        f"Command: `{' '.join([Path(sys.executable).name, *sys.argv])}`  ",
        f"Date: {started}  ",
        f"Machine: {machine()}  ",
        f"Load average (1/5/15 min) before: {' / '.join(f'{v:.2f}' for v in load_before)}, "
        f"after: {' / '.join(f'{v:.2f}' for v in load_after)} (other jobs shared the machine)",
        "",
        "FLOPs target 0.5; random proposals for `env`, the PPO agent (rollout 8) for `search`. Each Ray actor",
        "reserves 1 CPU and runs 1 torch thread; in-process settings name their torch threads.",
    ]
    for name, problem, env, search in rows:
        lines += [
            "",
            f"**{name}** ({problem.eval_samples} validation samples per candidate, "
            f"{problem.recalibrate_batches} BN-recalibration batches), evaluations per second:",
            "",
        ]
        for label, table in (("env", env), ("search", search)):
            lines += ["| " + label + " | " + " | ".join(table) + " |", "|---" * (len(table) + 1) + "|"]
            lines += ["| evals/s | " + " | ".join(f"{v:.2f}" for v in table.values()) + " |", ""]
        best_one = max(v for k, v in search.items() if k.startswith("--workers 1"))
        lines.append(f"2 workers / best single-process search: {search['--workers 2'] / best_one:.2f}x")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
