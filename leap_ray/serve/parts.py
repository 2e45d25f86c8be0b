"""A request bigger than a batch (an SDXL request for more images than max_batch_size) runs as parts
that each fit, concurrently, put back together in order, with one progress stream across its parts
and its stages (the base, then the refiner)."""

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from typing import Any, TypeVar

from leap_ray.api.progress import StepProgress
from leap_ray.engines.contract import ProgressHook

Part = TypeVar("Part")


async def run_in_parts(
    parts: Sequence[Part],
    run: Callable[[Part, ProgressHook | None], Awaitable[Any]],
    join: Callable[[list[Any]], Any],
    progress: ProgressHook | None,
) -> Any:
    """The joined outputs of `run` on each part; the first part to fail cancels the others, and its
    error is raised."""
    if len(parts) == 1:
        return await run(parts[0], progress)
    report = PartsProgress(len(parts), progress) if progress else None
    try:
        async with asyncio.TaskGroup() as group:
            runs = [
                group.create_task(run(part, report.part(index) if report else None))
                for index, part in enumerate(parts)
            ]
    except ExceptionGroup as failures:
        raise failures.exceptions[0] from None
    return join([each.result() for each in runs])


class PartsProgress:
    """One progress stream for a request run as parts: the parts' mean step in the earliest stage any
    part is in (a part past it counts all of that stage's steps), reported as it grows."""

    def __init__(self, parts: int, progress: Callable[[StepProgress], None]) -> None:
        self.at = [(0, 0)] * parts  # each part's (stage, step): stage 0 the base (or the only), 1 the refiner
        self.totals: dict[int, int] = {}  # each stage's steps
        self.progress = progress
        self.reported = (0, 0)

    def part(self, index: int) -> Callable[[StepProgress], None]:
        def report(event: StepProgress) -> None:
            own = int(event.stage == "refiner")
            self.at[index], self.totals[own] = (own, event.step), event.total
            stage = min(rank for rank, _ in self.at)
            total = self.totals[stage]
            step = sum(step if rank == stage else total for rank, step in self.at) // len(self.at)
            preview = event.preview if index == 0 and own == stage else None
            if (stage, step) > self.reported or preview:
                self.reported = max(self.reported, (stage, step))
                name = event.stage if own == stage else "base"
                self.progress(replace(event, step=step, total=total, stage=name, preview=preview))

        return report
