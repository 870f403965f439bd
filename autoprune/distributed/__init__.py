"""Ray for autoprune: parallel candidate evaluation, Tune experiments and cluster submission.

- `vec_env`: `RayVecEnv`, an SB3 VecEnv of Ray actors, each with its own problem and env (`search --workers N`).
- `cluster`: joining a cluster, or starting a private local Ray on 127.0.0.1.
- `tune`, `sweep`, `compare`: tuned random baselines and method x target x seed sweeps on Ray Tune, and their
  comparison table.
- `submit`, `job`: running an `autoprune` command as a Ray Job and fetching its results through the job's log.
- `results`: the results payload of a job (allowed files, log markers, safe unpacking); `auth`: the Ray auth
  token (where it is found, written 0600, and sent only to loopback or HTTPS).
- `commands`: the `sweep`, `tune` and `submit` CLI commands.

Ray is imported lazily, inside functions, so importing this package stays cheap.
"""
