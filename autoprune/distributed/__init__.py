"""Ray for autoprune: parallel candidate evaluation, Tune experiments and cluster submission.

- `vec_env`: `RayVecEnv`, an SB3 VecEnv of Ray actors, each with its own problem and env (`search --workers N`).
- `cluster`: joining a cluster, or starting a private local Ray on 127.0.0.1.
- `tune`, `sweep`, `compare`: tuned random baselines and method x target x seed sweeps on Ray Tune, and their
  comparison table.
- `submit`, `job`: running an `autoprune` command as a Ray Job and fetching its results through the job's log.
- `commands`: the `sweep`, `tune` and `submit` CLI commands.

Ray is imported lazily, inside functions, so importing this package stays cheap.
"""
