"""Training progress for people: a tqdm bar on a terminal, plain per-epoch lines elsewhere.

Fed by the training loop (`adapter-serve train`) and by a job's server-sent events (`wait()`).
"""

from __future__ import annotations

import sys
from typing import Any, Protocol, TextIO

from tqdm import tqdm

# Metric names not shown in an epoch line (the epoch is its prefix; the loss is shown first).
_NOT_METRICS = {"epoch", "train_loss"}


class ProgressDisplay(Protocol):
    def step(self, epoch: int, epochs: int, step: int, total_steps: int, loss: float | None
             ) -> None: ...

    def epoch(self, record: dict[str, Any], epochs: int | None) -> None: ...

    def close(self) -> None: ...


def epoch_line(record: dict[str, Any], epochs: int | None) -> str:
    """`epoch 2/3 train_loss=0.4120 accuracy=0.8125 f1=0.8000`."""
    of = f"/{epochs}" if epochs else ""
    parts = [f"epoch {record.get('epoch')}{of}"]
    if isinstance(record.get("train_loss"), int | float):
        parts.append(f"train_loss={record['train_loss']:.4f}")
    parts += [f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
              for k, v in record.items() if k not in _NOT_METRICS]
    return " ".join(parts)


class Silent:
    def step(self, epoch: int, epochs: int, step: int, total_steps: int, loss: float | None
             ) -> None:
        pass

    def epoch(self, record: dict[str, Any], epochs: int | None) -> None:
        pass

    def close(self) -> None:
        pass


class Lines(Silent):
    """One line per finished epoch: what a log file or a CI run wants."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def epoch(self, record: dict[str, Any], epochs: int | None) -> None:
        print(epoch_line(record, epochs), file=self.stream, flush=True)


class Bar:
    """A tqdm bar over the optimizer steps: epoch, loss and ETA; each epoch's metrics above it."""

    def __init__(self, stream: TextIO, desc: str = "") -> None:
        self.bar: tqdm[Any] | None = None
        self.stream, self.desc = stream, desc

    def _open(self, total: int) -> tqdm[Any]:
        if self.bar is None:
            self.bar = tqdm(total=total, unit="step", file=self.stream, desc=self.desc,
                            dynamic_ncols=True)
        return self.bar

    def step(self, epoch: int, epochs: int, step: int, total_steps: int, loss: float | None
             ) -> None:
        bar = self._open(total_steps)
        bar.set_description(f"{self.desc} epoch {epoch}/{epochs}".strip(), refresh=False)
        if loss is not None:
            bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
        bar.update(step - bar.n)

    def epoch(self, record: dict[str, Any], epochs: int | None) -> None:
        line = epoch_line(record, epochs)
        if self.bar is None:
            print(line, file=self.stream, flush=True)
        else:
            self.bar.write(line, file=self.stream)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def display(enabled: bool = True, lines: bool = False, stream: TextIO | None = None,
            desc: str = "") -> ProgressDisplay:
    """A bar when enabled and `stream` (stderr by default) is a terminal; otherwise per-epoch
    lines when `lines`, else nothing."""
    stream = stream or sys.stderr
    if not enabled:
        return Silent()
    if stream.isatty():
        return Bar(stream, desc)
    return Lines(stream) if lines else Silent()
