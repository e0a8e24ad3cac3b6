"""docs/rl.md's PPO example runs as written: PPO on GridWorld and in imagination (the shipped world model), and
both trained models predict valid actions in the real maze."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "rl.md"
SECTION = "## PPO on GridWorld and in imagination"


def _example_blocks() -> list[str]:
    text = DOC.read_text()
    section = text[text.index(SECTION) :]
    following = section.find("\n## ", len(SECTION))
    section = section if following < 0 else section[:following]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


@pytest.mark.slow
def test_ppo_example_in_docs_runs_and_its_models_act():
    blocks = _example_blocks()
    assert len(blocks) == 2, "the example is one block for the real maze and one for imagination"
    namespace: dict = {"__name__": "rl_example"}
    for block in blocks:
        exec(compile(block, str(DOC), "exec"), namespace)
    from worldbagel.envs import make_env

    env = make_env("WorldBagel/GridWorld-v0")
    obs, _ = env.reset(seed=0)
    for name in ("model", "dreamer"):
        model = namespace[name]
        assert model.num_timesteps >= 128, f"{name} did not train"
        action, _ = model.predict(obs, deterministic=True)
        assert env.action_space.contains(int(action))
        actions, _ = model.predict(np.stack([obs] * 3), deterministic=True)
        assert actions.shape == (3,) and all(env.action_space.contains(int(a)) for a in actions)
    assert namespace["dream"].unwrapped.spec.id == "WorldBagel/Imagined-v0"
