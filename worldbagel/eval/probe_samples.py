"""Held-out histories for the env-branch probes (controllability, look-back): windows of episodes that replay.

A probe cuts windows as the frame protocol does (`protocol.make_samples`, horizon 1 so the state at t0 is
not terminal) from the episodes that `EnvReplay` can rebuild, with `context` true frames ending at t0
(None: the model's window, `max_history_frames`). Options are checked under the probe's own config name.
"""

from __future__ import annotations

from collections.abc import Sequence

from worldbagel.data.trajectory import Episode
from worldbagel.errors import bad_argument
from worldbagel.world_model import WorldModel

from .env_replay import EnvReplay
from .protocol import FrameSample, make_samples

__all__ = ["probe_samples"]


def probe_samples(
    name: str,
    world_model: WorldModel,
    episodes: Sequence[Episode],
    replay: EnvReplay,
    context: int | None,
    max_trajectories: int | None,
    samples_per_trajectory: int,
    max_samples: int | None,
) -> tuple[list[FrameSample], dict[str, Episode], str | None]:
    """(samples, {episode id: episode}, None), or ([], {}, why no episode replays).

    `name` is the config section (e.g. "controllability") that errors name."""
    if context is not None and not (isinstance(context, int) and context >= 1):
        raise bad_argument(f"{name}.context", context, "use an int >= 1, or null for the model's window")
    if not (isinstance(samples_per_trajectory, int) and samples_per_trajectory >= 1):
        raise bad_argument(f"{name}.samples_per_trajectory", samples_per_trajectory, "use an int >= 1")
    if max_samples is not None and not (isinstance(max_samples, int) and max_samples >= 1):
        raise bad_argument(f"{name}.max_samples", max_samples, "use an int >= 1, or null for no cap")
    if max_trajectories is not None and not (isinstance(max_trajectories, int) and max_trajectories >= 1):
        raise bad_argument(f"{name}.max_trajectories", max_trajectories, "use an int >= 1, or null for all")
    usable = [ep for ep in episodes if replay.why_not(ep) is None]
    if not usable:
        first = episodes[0] if episodes else None
        why = replay.why_not(first) if first is not None else "there are no episodes"
        return [], {}, f"no episode replays in its env (episode {getattr(first, 'id', None)}: {why})"
    samples = make_samples(
        usable,
        world_model.pipe.vae_transform.target_size,
        horizons=(1,),
        context=context or world_model.config.max_history_frames,
        max_trajectories=max_trajectories,
        samples_per_trajectory=samples_per_trajectory,
        max_samples=max_samples,
        symbolic="off",
    )
    return samples, {ep.id: ep for ep in usable}, None
