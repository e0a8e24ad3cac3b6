"""Rollout videos show a policy's views (real | imagined | goal) beside the real frames."""

from __future__ import annotations

import numpy as np

from worldbagel.media import read_clip
from worldbagel.policies.base import BasePolicy
from worldbagel.rollout import build_env, run_rollouts, with_views


class _ViewPolicy(BasePolicy):
    """Always moves right; its 'imagined' view is a solid colour that encodes the step index."""

    def __init__(self):
        self.t = 0

    def reset(self, seed=None):
        self.t = 0

    def act(self, obs, info):
        self.t += 1
        return 1

    def views(self):
        return {
            "imagined": np.full((64, 64, 3), 10 * self.t, np.uint8),
            "goal": np.zeros((32, 32, 3), np.uint8),
        }


def test_with_views_aligns_each_view_with_the_frame_it_predicts():
    frames = [np.full((64, 64, 3), 200, np.uint8) for _ in range(4)]
    views = [{"imagined": np.full((64, 64, 3), 10 * (t + 1), np.uint8)} for t in range(3)]
    out = with_views(frames, views)
    assert len(out) == 4
    h, w = out[0].shape[:2]
    assert w == 64 * 2 + 2 and h > 64  # two panels, a gap, a label strip
    right = [int(f[-1, -1, 0]) for f in out]
    assert right == [128, 10, 20, 30]  # frame 0 blank; frame t+1 shows the view made at step t
    assert with_views(frames, []) is frames


def test_rollout_video_has_real_imagined_and_goal_panels(tmp_path):
    result = run_rollouts(
        lambda: build_env("WorldBagel/GridWorld-v0", {"max_steps": 3}),
        _ViewPolicy(),
        episodes=1,
        out_dir=tmp_path,
        video=False,
        gif=True,
    )
    gif = read_clip(tmp_path / result.episodes[0].gif)
    assert gif.shape[0] == result.episodes[0].length + 1
    assert gif.shape[2] == 3 * 64 + 2 * 2  # real | imagined | goal (goal resized to the frame size)
