"""Progress bars for the command line: core reports progress through callbacks, the CLI draws them."""

from __future__ import annotations

from types import TracebackType
from typing import Any

from tqdm import tqdm


class ProgressBars:
    """A progress callback, ``(stage, done, total)``, drawn as one tqdm bar per stage.

    A bar closes when its stage is complete; a stage that starts again (the next pack's "embedding") gets a
    new bar. Use as a context manager so an interrupted run closes what is open."""

    def __init__(self, **bar_options: Any) -> None:
        self._options = bar_options
        self._bars: dict[str, tqdm[Any]] = {}

    def __call__(self, stage: str, done: int, total: int | None) -> None:
        bar = self._bars.get(stage)
        if bar is None:
            bar = self._bars[stage] = tqdm(desc=stage, total=total, **self._options)
        if total is not None and bar.total != total:
            bar.total = total
        bar.update(done - bar.n)
        if total is not None and done >= total:
            bar.close()  # finished: the next bar starts below it
            del self._bars[stage]

    def close(self) -> None:
        for bar in self._bars.values():
            bar.close()
        self._bars.clear()

    def __enter__(self) -> ProgressBars:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()
