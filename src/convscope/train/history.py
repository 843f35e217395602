"""Per-epoch metrics of one training run."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from convscope.io import to_jsonable

__all__ = ["History"]


@dataclass
class History:
    """Per-epoch metrics of one :func:`fit` call; entry ``i`` belongs to epoch ``i``.

    ``test_loss`` and ``test_acc`` stay empty when ``fit`` had no test set.
    ``extra`` is free-form: callbacks append their own per-epoch numbers to it
    with :meth:`log` (e.g. ``"max_gain_db"``), and they land in ``metrics.json``.
    Losses are mean cross-entropy per image, accuracies fractions in [0, 1], ``lr``
    the rate used during the epoch and ``seconds`` the epoch's wall time (training
    and evaluation). Under torchrun all are over the whole data, not one shard.
    """

    train_loss: list[float] = field(default_factory=list)
    train_acc: list[float] = field(default_factory=list)
    test_loss: list[float] = field(default_factory=list)
    test_acc: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    extra: dict[str, list[Any]] = field(default_factory=dict)

    @property
    def epochs(self) -> int:
        """Epochs recorded so far."""
        return len(self.train_loss)

    def log(self, name: str, value: Any) -> None:
        """Append ``value`` to ``extra[name]`` (tensors and NumPy scalars become numbers)."""
        self.extra.setdefault(name, []).append(to_jsonable(value))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready copy; NaN and infinite values become ``None``."""
        return to_jsonable(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> History:
        """Inverse of :meth:`to_dict` (``None`` in a metric list reads back as NaN)."""

        def floats(key: str) -> list[float]:
            return [math.nan if v is None else float(v) for v in data.get(key, [])]

        return cls(
            train_loss=floats("train_loss"),
            train_acc=floats("train_acc"),
            test_loss=floats("test_loss"),
            test_acc=floats("test_acc"),
            lr=floats("lr"),
            seconds=floats("seconds"),
            extra={str(k): list(v) for k, v in dict(data.get("extra", {})).items()},
        )
