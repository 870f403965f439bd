"""`ChannelPruneEnv`: choosing which channels to keep under a budget, as a constrained MDP for gymnasium."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from autoprune.constraints import Constraints, check_feasible, rescale
from autoprune.graph.channel_graph import ChannelGraph
from autoprune.graph.features import GraphFeatures

if TYPE_CHECKING:
    from autoprune.scoring import ScoreRecord

from .rewards import RECENT_SCORES, REWARDS, adaptive_tau, dual_ascent, lagrangian_penalty

ScoreFn = Callable[[np.ndarray], "float | ScoreRecord"]
"""Scores a feasible keep-mask (one 0/1 per decision); higher is better, e.g. `SlicedScorer.score`, whose
`ScoreRecord` also says how many images the score cost (reported as `images` in the step info)."""


class ChannelPruneEnv(gym.Env[dict[str, np.ndarray], np.ndarray]):
    """Propose a keep-mask over a network's channels; the env makes it feasible, scores it and rewards progress.

    Each step is one candidate evaluation. The action is one keep (1) / prune (0) bit per decision (a coupled
    channel). The env scales it onto the budget (`autoprune.constraints.rescale`: every group's kept count is
    multiplied by one common factor, down when over budget, up when under it, so the proposal's allocation across
    groups survives and every candidate uses the budget), so every scored mask is feasible, scores the
    projection with `score_fn`, and pays the competition reward of that score against the best feasible score
    so far (see `autoprune.envs.rewards`) minus a Lagrangian penalty on how far the raw proposal broke the
    budget. The multiplier follows dual ascent on the proposal's signed excess, so the policy
    learns to propose feasible masks itself while the projection guarantees feasibility.

    The search state (best score, best mask, multiplier, evaluation count) persists across episodes. A seeded
    `reset` returns it to its initial value: empty, or whatever the last `set_state` loaded (so a resumed search
    survives the seeded reset a learner makes at its start, and a seeded reset followed by the same actions is
    reproducible).

    Observation (`spaces.Dict`, fixed sizes per network):
        x: (N, F) float32 node features of the current mask (`GraphFeatures.node_features`).
        edge_index: (2, E) node indices of the edges, as float32 (cast back to long by the policy).
        decision_index: (D,) node index of each decision, as float32.

    Action: `MultiBinary(D)`.

    Info: `score`, `flops_ratio`, `params_ratio` (of the projected mask `keep`), `violation` (of the raw
    proposal), `keep`, `best_score`, `lagrange` (after this step's update), `evaluations`, `proposal_flops_ratio`,
    and `images` (images forwarded, where the score function reports it).

    Args:
        graph: the network's channel graph.
        score_fn: scores a feasible keep-mask; called once per step.
        constraints: the budgets (at least one reachable; checked here).
        steps_per_episode: steps per episode: 1 proposes one full mask from the unpruned state; more refine it,
            each observation carrying the last projected mask.
        reward: a name in `autoprune.envs.rewards.REWARDS` ("self_competition" or "sign").
        tau: floor of the self-competition temperature, in score units; the temperature used is the larger of
            this, the spread of the last 32 scores and their median's gap to the best (`adaptive_tau`), so the
            reward does not saturate at -1.
        lagrange_lr: dual-ascent step size of the multiplier. 0 (the default) leaves the multiplier at 0: since
            `rescale` makes every proposal feasible at full budget whatever its scale, a penalty on the raw
            proposal's cost would only punish proposals that keep more of an expensive group, which is exactly
            the group-level choice the agent must be free to make (measured: it stopped PPO from keeping a
            coupled group whole in 2 of 3 seeds of tests/test_learning.py's group task).
        priority: per-decision priority for the projection (higher survives; default weight L1).
        sensitivity: measured accuracy drop per prunable group at half width (a node feature; see
            `autoprune.graph.features.GraphFeatures`).
        targets: several budgets searched at once (`autoprune search --targets`): each episode takes the next
            one in turn (`constraints` is ignored), its ratio is the observation's target feature, and the reward
            competes against the best score reached at that target. `score_fn` may then be a sequence of score
            functions, one per target (each racing against its own best).

    Version History:
        v1 (unchanged for one budget): `targets` cycles the budget over episodes; info has `latency_ratio` where
            a latency table is set, `target` and `full` (whether the score was measured on every image).
        v1: proposals are scaled onto the budget group by group (`rescale`, also up) instead of losing their
            cheapest channels anywhere (`project`); no Lagrangian penalty by default; node features gain
            producers, merged, rank and sensitivity.
        v0: initial version.
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": []}

    def __init__(
        self,
        graph: ChannelGraph,
        score_fn: ScoreFn,
        constraints: Constraints,
        steps_per_episode: int = 1,
        reward: str = "self_competition",
        tau: float = 0.01,
        lagrange_lr: float = 0.0,
        priority: np.ndarray | None = None,
        sensitivity: np.ndarray | None = None,
        targets: Sequence[Constraints] | None = None,
    ) -> None:
        if steps_per_episode < 1:
            raise ValueError(f"steps_per_episode must be at least 1, got {steps_per_episode}")
        if reward not in REWARDS:
            raise ValueError(f"unknown reward {reward!r}; choose from {sorted(REWARDS)}")
        if tau <= 0 or lagrange_lr < 0:
            raise ValueError("tau must be positive and lagrange_lr non-negative")
        if graph.num_decisions == 0:
            raise ValueError("the graph has no prunable channels")
        self.targets = list(targets) if targets else [constraints]
        for target in self.targets:
            check_feasible(graph, target)
        score_fns = list(score_fn) if isinstance(score_fn, Sequence) else [score_fn] * len(self.targets)
        if len(score_fns) != len(self.targets):
            raise ValueError(f"{len(score_fns)} score functions for {len(self.targets)} targets")
        self.graph = graph
        self.score_fn = score_fn
        self.score_fns = score_fns
        self.constraints = self.targets[0]
        self.steps_per_episode = steps_per_episode
        self.reward_name = reward
        self._competition = REWARDS[reward]
        self.tau = tau
        self.lagrange_lr = lagrange_lr
        self.priority = priority
        self.features = GraphFeatures(graph, sensitivity)
        self._target_index = 0
        self._projected: tuple[tuple[bytes, int], np.ndarray] | None = None  # the last `project`: key, mask
        self._episodes = 0
        self.target = self._target_ratio()

        n, d = self.features.num_nodes, graph.num_decisions
        static = self.features.static
        self._edge_index = self.features.edge_index.astype(np.float32)
        self._decision_index = self.features.decision_nodes.astype(np.float32)
        self.observation_space = spaces.Dict(
            {
                # Mask-dependent columns (keep, flops_ratio, target) lie in [0, 1]; the rest are static.
                "x": spaces.Box(np.minimum(static, 0.0), np.maximum(static, 1.0), dtype=np.float32),
                "edge_index": spaces.Box(0, n - 1, shape=self._edge_index.shape, dtype=np.float32),
                "decision_index": spaces.Box(0, n - 1, shape=(d,), dtype=np.float32),
            }
        )
        self.action_space = spaces.MultiBinary(d)

        self._initial = self._fresh_state()
        self._restore(self._initial)
        self._keep = graph.full_mask()
        self._steps = 0

    # -- gymnasium API -------------------------------------------------------------------------------------
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        super().reset(seed=seed)
        if seed is not None:
            self._restore(self._initial)
            self._episodes = 0
        self._target_index = self._episodes % len(self.targets)
        self._episodes += 1
        self.constraints = self.targets[self._target_index]
        self.target = self._target_ratio()
        self._best_score = self._bests[self._target_index]
        self._keep = self.graph.full_mask()
        self._steps = 0
        return self._observation(), {"evaluations": self._evaluations}

    def step(self, action: np.ndarray) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        if self._steps >= self.steps_per_episode:
            raise RuntimeError("the episode is over; call reset()")
        proposal = self._proposal(action)
        proposal_ratios = self.constraints.ratios(self.graph, proposal)
        violation = self.constraints.violation(self.graph, proposal)
        keep = self.project(action)
        result = self.score_fns[self._target_index](keep)
        score = float(getattr(result, "score", result))

        tau = adaptive_tau(self._recent, self.tau, self._best_score)
        reward = self._competition(score, self._best_score, tau) - lagrangian_penalty(violation, self._lagrange)
        self._recent = [*self._recent, score][-RECENT_SCORES:]
        self._lagrange = dual_ascent(self._lagrange, self._excess(proposal_ratios), self.lagrange_lr)
        self._evaluations += 1
        if self._best_score is None or score > self._best_score:
            self._best_score = score
            self._bests[self._target_index] = score
        if self._best_keep_score is None or score > self._best_keep_score:
            self._best_keep, self._best_keep_score = keep.copy(), score

        self._keep = keep
        self._steps += 1
        ratios = self.constraints.ratios(self.graph, keep)
        info = {
            "score": score,
            "flops_ratio": ratios["flops"],
            "params_ratio": ratios["params"],
            "violation": violation,
            "keep": keep.copy(),
            "best_score": self._best_score,
            "lagrange": self._lagrange,
            "evaluations": self._evaluations,
            "proposal_flops_ratio": proposal_ratios["flops"],
            "images": getattr(result, "images", None),
            "full": bool(getattr(result, "full", True)),
            "target": self.target,
        }
        if "latency" in ratios:
            info["latency_ratio"] = ratios["latency"]
        return self._observation(), float(reward), self._steps >= self.steps_per_episode, False, info

    # -- search state --------------------------------------------------------------------------------------
    @property
    def best_score(self) -> float | None:
        """The best score the reward competes against (this env's, or a higher one given to `set_best`)."""
        return self._best_score

    @property
    def best_keep(self) -> np.ndarray | None:
        """The best mask this env evaluated itself."""
        return None if self._best_keep is None else self._best_keep.copy()

    @property
    def lagrange(self) -> float:
        return self._lagrange

    @property
    def evaluations(self) -> int:
        return self._evaluations

    def set_best(self, score: float) -> None:
        """Raise the best score to `score` (a global best from parallel searches); a lower score is ignored."""
        if self._best_score is None or score > self._best_score:
            self._best_score = float(score)
            self._bests[self._target_index] = self._best_score

    def project(self, action: np.ndarray) -> np.ndarray:
        """The feasible mask `step` scores for `action` (what a vectorised env scores ahead, in one batch); the
        last one is remembered, so `step` does not project the action a vectorised env projected again."""
        proposal = self._proposal(action)
        key = (proposal.tobytes(), id(self.constraints))
        if self._projected is None or self._projected[0] != key:
            self._projected = (key, rescale(self.graph, proposal, self.constraints, self.priority))
        return self._projected[1].copy()

    def _proposal(self, action: np.ndarray) -> np.ndarray:
        proposal = np.asarray(action)
        if proposal.shape != (self.graph.num_decisions,):
            raise ValueError(f"action has shape {proposal.shape}, expected ({self.graph.num_decisions},)")
        return (proposal > 0.5).astype(np.int8)

    def get_state(self) -> dict[str, Any]:
        """The search state as JSON-ready values: `best_score`, `best_keep`, `best_keep_score`, `lagrange`,
        `evaluations`."""
        return {
            "best_score": self._best_score,
            "best_keep": None if self._best_keep is None else self._best_keep.astype(int).tolist(),
            "best_keep_score": self._best_keep_score,
            "lagrange": self._lagrange,
            "evaluations": self._evaluations,
            "recent_scores": list(self._recent),
            **({"target_bests": list(self._bests)} if len(self.targets) > 1 else {}),
        }

    def set_state(self, state: dict[str, Any]) -> None:
        """Load a state from `get_state`; it also becomes what a seeded `reset` returns to."""
        best_keep = state.get("best_keep")
        self._initial = {
            "best_score": None if state.get("best_score") is None else float(state["best_score"]),
            "best_keep": None if best_keep is None else self.graph.check_mask(np.asarray(best_keep)),
            "best_keep_score": None if state.get("best_keep_score") is None else float(state["best_keep_score"]),
            "lagrange": float(state.get("lagrange", 0.0)),
            "evaluations": int(state.get("evaluations", 0)),
            "recent_scores": [float(v) for v in state.get("recent_scores", [])],
        }
        bests = state.get("target_bests")
        if bests is not None and len(bests) != len(self.targets):
            raise ValueError(f"the state has bests for {len(bests)} targets, the env {len(self.targets)}")
        if bests:
            self._initial["target_bests"] = [None if b is None else float(b) for b in bests]
        self._restore(self._initial)

    # -- helpers -------------------------------------------------------------------------------------------
    @staticmethod
    def _fresh_state() -> dict[str, Any]:
        return {
            "best_score": None,
            "best_keep": None,
            "best_keep_score": None,
            "lagrange": 0.0,
            "evaluations": 0,
            "recent_scores": [],
        }

    def _restore(self, state: dict[str, Any]) -> None:
        self._best_score = state["best_score"]
        self._best_keep = None if state["best_keep"] is None else state["best_keep"].copy()
        self._best_keep_score = state["best_keep_score"]
        self._lagrange = state["lagrange"]
        self._evaluations = state["evaluations"]
        self._recent = list(state["recent_scores"])
        bests = state.get("target_bests")
        self._bests = list(bests) if bests else [self._best_score] * len(self.targets)
        self._best_score = self._bests[self._target_index]

    def _target_ratio(self) -> float:
        """The ratio of the current budget shown to the policy: FLOPs, else latency, else (with several targets)
        parameters, else 1."""
        budgets = self.constraints.budgets()
        order = ("flops", "latency", "params") if len(self.targets) > 1 else ("flops", "latency")
        return next((budgets[k] for k in order if k in budgets), 1.0)

    def _excess(self, ratios: dict[str, float]) -> float:
        """Largest signed relative excess over a budget (negative when every budget has room; 0 if none)."""
        return max((ratios[k] - t for k, t in self.constraints.budgets().items()), default=0.0)

    def _observation(self) -> dict[str, np.ndarray]:
        return {
            "x": self.features.node_features(self._keep, self.target),
            "edge_index": self._edge_index.copy(),
            "decision_index": self._decision_index.copy(),
        }
