"""Options of `worldbagel eval` (torch-free dataclasses shared by the library and the CLI schema).

    DatasetConfig          held-out data: env-recorded episodes, a trajectory folder, NWM/GNM layout, videos
    FramesEvalConfig       the NWM frame-prediction protocol (horizons, modes, context, sample budget)
    ControllabilityEvalConfig   next frame under every action, scored against the env's true frames
    LookbackEvalConfig     turn left k times and back, open loop: what the model's window remembers
    NavigationEvalConfig   closed-loop episodes of a policy in an env (success, SPL, soft-SPL)
    TrajectoryEvalConfig   open-loop planning from a start frame to a goal frame (ATE, RPE)
    TextEvalConfig         exact-match accuracy on the dataset's Q&A annotations

Every field is documented; docs/metrics.md ("worldbagel eval") describes what each task writes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from worldbagel.data.episode_source import LeRobotSourceConfig

DATASET_FORMATS = ("env", "trajectories", "nwm", "video", "lerobot")
TASKS = ("frames", "controllability", "lookback", "navigation", "trajectory", "text")
FRAME_MODES = ("single_step", "open_loop")


@dataclass
class DatasetConfig:
    """Held-out data of `worldbagel eval` (config group `dataset`: gridworld, trajectories, nwm, video,
    lerobot)."""

    name: str = "gridworld"
    """Preset name (informational; the yaml file of the `dataset` group sets it)."""
    format: str = "env"
    """env: episodes recorded now from the `env` group with `policy` (nothing stored); trajectories: a folder
    written by `worldbagel collect`; nwm: the NWM/GNM layout (traj_data.pkl + jpgs); video: a video file, a
    folder of frames, or a folder of video files (no actions: the model continues the clip); lerobot: a
    LeRobot v2 dataset (action columns as number texts). Read by worldbagel.data.episode_source."""
    path: str | None = None
    """Dataset folder or video file (formats trajectories, nwm, video)."""
    splits: list[str] | None = None
    """trajectories: keep only episodes of these splits (None = every episode)."""
    split: str = "test"
    """nwm: split name, read from <split_dir>/<split>/traj_names.txt."""
    split_dir: str | None = None
    """nwm: folder of split lists; None = every trajectory folder under `path`."""
    metric_waypoint_spacing: float = 1.0
    """nwm: metres per typical step (e.g. 0.25 for RECON); trajectory errors are reported in metres."""
    frame_skip: int = 1
    """nwm, video, lerobot: use every k-th frame (nwm: every k-th pose)."""
    lerobot: LeRobotSourceConfig = field(default_factory=LeRobotSourceConfig)
    """lerobot: camera key, action columns, text format, episodes (as `finetune source.lerobot.*`)."""
    policy: str = "random"
    """env: registered policy that records the episodes (random covers wall bumps and turns; oracle walks
    shortest paths)."""
    episodes: int = 8
    """env: episodes to record (episode i is seeded with seed + i)."""
    seed: int = 1000
    """env: seed of episode 0."""
    max_steps: int = 32
    """env: steps per recorded episode at most."""
    annotate: str | None = None
    """env: text annotator of the recorded steps (gridworld: instruction, Q&A and thoughts from the symbolic
    state, as `worldbagel collect annotate=gridworld` writes them); enables the text task. `auto`: the env's
    own annotator (gridworld-think for GridWorld envs, none for MiniWorld and the others)."""


@dataclass
class FramesEvalConfig:
    """The NWM frame-prediction protocol (see worldbagel/eval/protocol.py)."""

    horizons: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16])
    """Steps ahead k at which predicted frames are scored."""
    modes: list[str] = field(default_factory=lambda: list(FRAME_MODES))
    """single_step (teacher forcing: true frames and actions up to t0+k-1, predict frame t0+k) and/or
    open_loop (from the context ending at t0, roll out along the true actions to t0+k)."""
    context: int = 4
    """True frames observed before the first prediction (the context ends at frame t0)."""
    max_trajectories: int | None = 8
    """Use at most this many trajectories (evenly spread over the dataset; None = all)."""
    samples_per_trajectory: int = 1
    """Context end points t0 per trajectory (evenly spread over the valid range)."""
    max_samples: int | None = 16
    """Cap on the total number of samples (None = no cap)."""
    batch_size: int = 8
    """Imagined futures predicted together in one batched forward (forked histories)."""
    metrics: list[str] = field(default_factory=lambda: ["psnr", "ssim"])
    """Pixel metrics: any of psnr, ssim, mse, l1."""
    perceptual: list[str] = field(default_factory=list)
    """Optional per-frame perceptual metrics: lpips, dreamsim (their packages and local weights needed)."""
    perceptual_weights: dict[str, str] = field(default_factory=dict)
    """Local weights per perceptual metric, e.g. {lpips: /data/alexnet-owt-7be5be79.pth}."""
    symbolic: str = "auto"
    """Gridworld symbolic accuracy (state decoded from frames): auto (when the episodes are top-down
    GridWorld with symbolic infos), on (required) or off."""
    contact_sheet_samples: int = 3
    """Samples drawn in contact_sheet.png (0 = no sheet)."""


@dataclass
class ControllabilityEvalConfig:
    """Controllability (worldbagel/eval/controllability.py): from held-out histories, the next frame under every
    action of the env; right when nearer (MSE) to that action's true frame than to the other actions'. The true
    frames come from replaying the episode in its env (episodes need their env id, kwargs and seed)."""

    context: int | None = None
    """True frames in each history; None = the model's window (its max_history_frames)."""
    max_trajectories: int | None = 8
    """Use at most this many trajectories (evenly spread; None = all)."""
    samples_per_trajectory: int = 2
    """Histories per trajectory (end points spread evenly over the trajectory)."""
    max_samples: int | None = 16
    """Cap on the number of histories (None = no cap)."""
    batch_size: int = 8
    """Histories whose action branches are predicted in one batched forward (batch_size x actions frames)."""
    exclude: list[str] = field(default_factory=lambda: ["stop"])
    """Action texts left out: stop moves nothing (its true frame is the current one) and ends the episode."""


@dataclass
class LookbackEvalConfig:
    """The look-back test (worldbagel/eval/lookback.py): from a held-out history, turn left k times and right
    k times open loop, and compare the last predicted frame with the true one (the start frame); run with the
    model's window and again with `one_frame_history` frames. Needs turn left / turn right actions (MiniWorld,
    Habitat)."""

    turns: list[int] = field(default_factory=lambda: [3, 4])
    """Turns k each way."""
    context: int | None = None
    """True frames in each history; None = the model's window (its max_history_frames)."""
    max_trajectories: int | None = 8
    """Use at most this many trajectories (evenly spread; None = all)."""
    samples_per_trajectory: int = 1
    """Start states per trajectory."""
    max_samples: int | None = 8
    """Cap on the number of start states (None = no cap)."""
    batch_size: int = 8
    """Rollouts advanced together in one batched forward per step."""
    one_frame_history: int = 1
    """History of the comparison run (max_history_frames, no window slack): what the model does without memory."""


@dataclass
class NavigationEvalConfig:
    """Closed-loop episodes of the `policy` group in the `env` group (success, SPL, soft-SPL)."""

    episodes: int = 4
    """Episodes; episode i is seeded with seed + i."""
    seed: int = 1000
    """Seed of episode 0 (GridWorld with env.kwargs.split=eval draws held-out layouts)."""
    max_steps: int | None = None
    """Cap on steps per episode on top of the env's own limit."""
    video: bool = False
    """Write an mp4 per episode under navigation/."""
    baselines: list[str] = field(default_factory=lambda: ["random", "oracle"])
    """Policies run on the same episode seeds and reported beside the evaluated one (navigation.baselines.<name>);
    the evaluated policy itself is skipped here, and one that cannot run in the env is recorded as skipped."""


@dataclass
class TrajectoryEvalConfig:
    """Open-loop planning on continuous-action trajectories (NWM style): plan from a start frame to a goal
    frame, integrate the planned and the true actions to poses, report ATE and RPE."""

    trajectories: int = 4
    """Trajectories planned (evenly spread over the dataset)."""
    horizon: int = 8
    """Steps between the start frame and the goal frame (the planned sequence length)."""
    population: int = 16
    """CEM candidates per iteration."""
    elites: int = 4
    """CEM elites refitted per iteration."""
    iterations: int = 2
    """CEM iterations."""
    energy: str = "latent"
    """Goal distance of the planner: latent, ssim or lpips."""
    align: str = "none"
    """ATE alignment: none (both trajectories start at the same pose), rigid or sim."""
    rpe_delta: int = 1
    """Step of the relative pose error."""


@dataclass
class TextEvalConfig:
    """Exact-match accuracy on the Q&A annotations of the episodes (`qa` lists in steps.jsonl)."""

    max_questions: int = 64
    """Questions asked at most (evenly spread over the dataset)."""
    think: bool = False
    """Ask with the think system prompt (the answer after </think> is scored)."""
    max_new_tokens: int = 32
    """Tokens generated per answer at most (256 is used with think)."""
