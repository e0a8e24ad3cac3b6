"""Action codecs: round trips, tolerant parsing, and rejection of bad text with a clear message."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest

from worldbagel.actions import (
    ContinuousActionCodec,
    DiscreteActionCodec,
    NavActionCodec,
    codec_for_env,
    normalize_text,
)
from worldbagel.errors import ConfigError, InvalidAction

GRID_NAMES = ("move up", "move right", "move down", "move left")


def test_discrete_round_trip_and_tolerant_parsing():
    codec = DiscreteActionCodec(GRID_NAMES)
    assert codec.vocabulary == GRID_NAMES
    for i, name in enumerate(GRID_NAMES):
        assert codec.encode(i) == name
        assert codec.encode(np.int64(i)) == name
        assert codec.decode(name) == i
    assert codec.decode("  Move   RIGHT. ") == 1
    assert codec.decode("move_left") == 3


def test_discrete_rejects_unknown_text_naming_it_and_listing_forms():
    codec = DiscreteActionCodec(GRID_NAMES)
    with pytest.raises(InvalidAction) as err:
        codec.decode("jump over the wall")
    msg = str(err.value)
    assert "'jump over the wall'" in msg
    assert all(repr(n) in msg for n in GRID_NAMES)
    with pytest.raises(InvalidAction, match="out of range"):
        codec.encode(4)
    with pytest.raises(InvalidAction, match="not an integer"):
        codec.encode(1.5)


def test_discrete_rejects_names_that_collide_after_normalising():
    with pytest.raises(ConfigError, match="repeated"):
        DiscreteActionCodec(["Move Up", "move_up"])


def test_nav_codec_texts_and_numeric_spellings():
    codec = NavActionCodec(("stop", "move_forward", "turn_left", "turn_right"), forward_m=0.25, turn_deg=30)
    assert codec.vocabulary == (
        "stop",
        "move forward 0.25 m",
        "turn left 30 degrees",
        "turn right 30 degrees",
    )
    for i, text in enumerate(codec.vocabulary):
        assert codec.decode(text) == i
        assert codec.encode(i) == text
    assert codec.decode("Move forward 0.250 m") == 1
    assert codec.decode("move forward 0.25m") == 1
    assert codec.decode("turn left 30°") == 2
    assert codec.decode("turn right 30.0 deg") == 3
    assert codec.decode("STOP.") == 0
    assert codec.index_of("turn_left") == 2 and codec.index_of("move_backward") is None


def test_nav_codec_rejects_wrong_step_and_missing_kind():
    codec = NavActionCodec(("stop", "move_forward", "turn_left", "turn_right"), forward_m=0.25, turn_deg=30)
    with pytest.raises(InvalidAction, match=r"'move forward 0.5 m'.*differs from this env's 0.25 m"):
        codec.decode("move forward 0.5 m")
    with pytest.raises(InvalidAction, match="differs from this env's 30 degrees"):
        codec.decode("turn left 45 degrees")
    with pytest.raises(InvalidAction, match="no move backward action"):
        codec.decode("move backward 0.25 m")
    with pytest.raises(InvalidAction, match=r"'fly north'.*valid forms: 'stop', 'move forward 0.25 m'"):
        codec.decode("fly north")
    with pytest.raises(InvalidAction):
        codec.decode("move forward -0.25 m")


def test_nav_codec_from_names_miniworld_order():
    names = ("turn left 15 degrees", "turn right 15 degrees", "move forward 0.2 m")
    codec = NavActionCodec.from_names(names)
    assert codec.kinds == ("turn_left", "turn_right", "move_forward")
    assert codec.forward_m == pytest.approx(0.2) and codec.turn_deg == pytest.approx(15)
    assert codec.vocabulary == names
    with pytest.raises(InvalidAction, match="more than one step size"):
        NavActionCodec.from_names(("move forward 0.2 m", "move backward 0.3 m"))
    with pytest.raises(InvalidAction, match="not a navigation action"):
        NavActionCodec.from_names(GRID_NAMES)


def test_nav_codec_bad_config_names_argument():
    with pytest.raises(ConfigError, match="forward_m"):
        NavActionCodec(forward_m=0)
    with pytest.raises(ConfigError, match="kinds"):
        NavActionCodec(("stop", "fly"))


def test_continuous_text_format_is_fixed():
    codec = ContinuousActionCodec()
    text = codec.encode([0.25, -0.1, math.radians(15)])
    assert text == "dx 0.25 dy -0.10 dyaw 15.0"
    assert codec.encode([-0.001, 0.0, -1e-5]) == "dx 0.00 dy 0.00 dyaw 0.0"
    assert codec.encode(np.array([1.0, 2.346, -math.pi / 2])) == "dx 1.00 dy 2.35 dyaw -90.0"


def test_continuous_round_trips():
    codec = ContinuousActionCodec()
    rng = np.random.default_rng(0)
    for _ in range(200):
        a = np.array([rng.uniform(-3, 3), rng.uniform(-3, 3), rng.uniform(-math.pi, math.pi)])
        text = codec.encode(a)
        back = codec.decode(text)
        assert back.dtype == np.float32 and back.shape == (3,)
        assert abs(back[0] - a[0]) <= 0.005 + 1e-6 and abs(back[1] - a[1]) <= 0.005 + 1e-6
        assert abs(math.degrees(back[2]) - math.degrees(a[2])) <= 0.05 + 1e-4
        assert codec.encode(back) == text  # canonical text is a fixed point
    assert codec.decode("DX 1 dy -2.5  dyaw 90") == pytest.approx([1.0, -2.5, math.pi / 2])


def test_continuous_bounds_and_bad_text():
    codec = ContinuousActionCodec(max_xy=2.0, max_yaw_deg=90)
    with pytest.raises(InvalidAction, match=r"'dx 3.00 dy 0.00 dyaw 0.0'.*out of bounds.*<= 2"):
        codec.decode("dx 3.00 dy 0.00 dyaw 0.0")
    with pytest.raises(InvalidAction, match="dyaw"):
        codec.decode("dx 0 dy 0 dyaw 120")
    with pytest.raises(InvalidAction, match=r"'dy 1 dx 0 dyaw 0'.*valid forms"):
        codec.decode("dy 1 dx 0 dyaw 0")
    with pytest.raises(InvalidAction, match="out of bounds"):
        codec.encode([5.0, 0.0, 0.0])
    with pytest.raises(InvalidAction, match="3 finite numbers"):
        codec.encode([np.nan, 0.0, 0.0])
    clipped = ContinuousActionCodec(max_xy=2.0, max_yaw_deg=90, clip=True)
    assert clipped.encode([5.0, -5.0, math.pi]) == "dx 2.00 dy -2.00 dyaw 90.0"


class _NamedEnv(gym.Env):
    observation_space = gym.spaces.Box(0, 255, (4, 4, 3), np.uint8)

    def __init__(self, names=None, space=None):
        self.action_names = names
        self.action_space = space or gym.spaces.Discrete(len(names))


def test_codec_for_env_picks_by_names_and_space():
    grid = codec_for_env(gym.wrappers.TimeLimit(_NamedEnv(GRID_NAMES), 10))
    assert isinstance(grid, DiscreteActionCodec) and grid.vocabulary == GRID_NAMES
    nav = codec_for_env(
        _NamedEnv(("stop", "move forward 0.25 m", "turn left 30 degrees", "turn right 30 degrees"))
    )
    assert isinstance(nav, NavActionCodec) and nav.kinds[1] == "move_forward"
    cont = codec_for_env(_NamedEnv(None, gym.spaces.Box(-1, 1, (3,), np.float32)))
    assert isinstance(cont, ContinuousActionCodec)
    plain = codec_for_env(_NamedEnv(None, gym.spaces.Discrete(2)))
    assert plain.vocabulary == ("action 0", "action 1")
    with pytest.raises(ConfigError, match="no action codec"):
        codec_for_env(_NamedEnv(None, gym.spaces.Box(-1, 1, (7,), np.float32)))


def test_normalize_text():
    assert normalize_text("  Turn_Left   30 Degrees. ") == "turn left 30 degrees"
