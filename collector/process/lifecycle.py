"""The process's stages, stopped in the reverse of the order they started.

`CollectorServer` registers each stage once it has started (PostgreSQL, the store, the processors,
the pipeline, the control socket, the metrics endpoint, the HTTP door, the gRPC port, health, thread
priorities); shutdown stops them last-started first, each within what is left of the grace period,
so that nothing is stopped under a stage still using it. A stage that fails to stop is logged with
its error and the others are still stopped.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)

Stop = Callable[[float], Awaitable[None]]
"""Stops one stage, given the seconds left before the deadline."""


@dataclass(frozen=True, slots=True)
class Stage:
    name: str
    stop: Stop


class Stages:
    """Started stages, in start order."""

    def __init__(self) -> None:
        self._started: list[Stage] = []

    def started(self, name: str, stop: Stop) -> None:
        self._started.append(Stage(name, stop))

    @property
    def names(self) -> list[str]:
        return [stage.name for stage in self._started]

    async def stop_all(self, deadline: float) -> None:
        """Stop every started stage, last first; each gets the time left until `deadline` (loop time)."""
        loop = asyncio.get_running_loop()
        while self._started:
            stage = self._started.pop()
            try:
                await stage.stop(max(0.0, deadline - loop.time()))
            except Exception as error:
                log.error("stage did not stop cleanly", extra={"stage": stage.name, "error": repr(error)})
