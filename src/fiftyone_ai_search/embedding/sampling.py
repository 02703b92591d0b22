"""Which frames of a video a frame index embeds (:class:`FrameSampling`),
and what each frame's stored vector must match to be kept
(:func:`frame_fingerprint`): no decoding here (neither OpenCV nor PIL is
imported), so the SDK takes a rule at start-up cost nil; the decoding is
:mod:`fiftyone_ai_search.embedding.frames`.
"""

from __future__ import annotations

import dataclasses
import math
import numbers

#: the uniform sampling rate by default, in frames per second of video
DEFAULT_FPS = 1.0


@dataclasses.dataclass(frozen=True)
class FrameSampling:
    """Which frames of a video are embedded.

    Args:
        fps (1.0): uniform frames per second of video: the frame numbers of
            FiftyOne's ``to_frames(fps=fps)`` (every frame if the video's
            frame rate is not above it). A finite number > 0
        scene_threshold (None): sample a frame where the scene changes too:
            the total variation distance (0 to 1) between the colour
            histograms of the thumbnails of a frame checked and of the frame
            converted before it (at most ``1 / scene_check_fps`` s earlier)
            above which the frame checked is sampled. None samples uniform
            frames only
        scene_check_fps (4.0): how often, per second of video, frames are
            compared for a scene change: a cut is found within
            ``1 / scene_check_fps`` s after it. Each check converts one
            frame that uniform sampling alone would only have decoded
    """

    fps: float = DEFAULT_FPS
    scene_threshold: float | None = None
    scene_check_fps: float = 4.0

    def __post_init__(self):
        object.__setattr__(self, "fps", _positive(self.fps, "fps"))
        object.__setattr__(self, "scene_check_fps", _positive(
            self.scene_check_fps, "scene_check_fps"))
        threshold = self.scene_threshold
        if threshold is not None:
            if (isinstance(threshold, bool)
                    or not isinstance(threshold, numbers.Real)
                    or not 0 < threshold < 1):
                raise ValueError(
                    f"scene_threshold must be None or a number between 0 "
                    f"and 1 (exclusive), got {threshold!r}")
            object.__setattr__(self, "scene_threshold", float(threshold))

    @property
    def key(self) -> str:
        """The rule as a short stable string, part of every frame's
        fingerprint: ``"fps=1"`` or ``"fps=1;scene=0.3@4"``."""
        key = f"fps={_number(self.fps)}"
        if self.scene_threshold is not None:
            key += (f";scene={_number(self.scene_threshold)}"
                    f"@{_number(self.scene_check_fps)}")
        return key

    def to_dict(self) -> dict:
        """Returns the rule as a JSON-serialisable dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "FrameSampling":
        """Builds the rule from :meth:`to_dict`'s output; missing keys take
        their defaults.

        Raises:
            ValueError: on unknown keys or invalid values
        """
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(
                f"unknown frame sampling settings: "
                f"{', '.join(sorted(unknown))}")
        return cls(**d)


def frame_fingerprint(video_fingerprint: str | None, frame_number: int,
                      sampling: FrameSampling,
                      frame_rate: float | None = None) -> str:
    """What a frame's stored vector must match to be kept: its video file's
    fingerprint (the sync's ``file_fingerprint``: size and mtime; None for a
    file that could not be stat'ed), its frame number and the sampling rule,
    with the frame rate its grid counted with where one was given (the
    sample's ``metadata.frame_rate``: computing a video's metadata may
    change the frame numbers its rule samples).

    Returns:
        a string such as ``"1048576:1733400000000000000|31|fps=1"``, or
        ``"...|31|fps=1@29.97"`` with a frame rate
    """
    rate = "" if frame_rate is None else f"@{_number(float(frame_rate))}"
    return f"{video_fingerprint}|{int(frame_number)}|{sampling.key}{rate}"


def _positive(value, name):
    if (isinstance(value, bool) or not isinstance(value, numbers.Real)
            or not math.isfinite(value) or value <= 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def _number(value):
    """A float as a short stable string: 1.0 -> "1", 0.25 -> "0.25"."""
    return f"{value:.6g}"
