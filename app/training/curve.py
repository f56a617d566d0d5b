"""A training loss curve of bounded size, for the job's live chart and its stored history."""

from __future__ import annotations

MAX_POINTS = 512


class LossCurve:
    """[step, loss] points: one per step until there are MAX_POINTS, then each pair of points
    merges into one (the mean, at the later step) and each later point averages twice as many
    steps, so a curve of any length keeps its shape in at most MAX_POINTS points."""

    def __init__(self, max_points: int = MAX_POINTS) -> None:
        if max_points < 2 or max_points % 2:
            raise ValueError(f"max_points must be even and >= 2, not {max_points}")
        self.max_points = max_points
        self.width = 1  # steps per point
        self._points: list[tuple[int, float]] = []
        self._sum, self._count, self._last_step = 0.0, 0, 0

    def add(self, step: int, loss: float) -> None:
        self._sum, self._count, self._last_step = self._sum + loss, self._count + 1, step
        if self._count < self.width:
            return
        self._points.append((step, self._sum / self._count))
        self._sum, self._count = 0.0, 0
        if len(self._points) == self.max_points:
            pts = self._points
            self._points = [(pts[i + 1][0], (pts[i][1] + pts[i + 1][1]) / 2)
                            for i in range(0, len(pts), 2)]
            self.width *= 2

    def points(self) -> list[list[float]]:
        """The curve as JSON-ready [step, loss] pairs; the steps of an unfinished point are one
        more, so the curve reaches the latest step."""
        out: list[list[float]] = [[s, round(v, 5)] for s, v in self._points]
        if self._count:
            out.append([self._last_step, round(self._sum / self._count, 5)])
        return out
