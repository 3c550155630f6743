"""A service as one process runs it: what was loaded, its context, HTTP runner and consumers, and whether it is
ready. Not how it is started or stopped (`meshrun.runtime`)."""
from __future__ import annotations

from dataclasses import dataclass, field

from aiohttp import web

from meshrun.context import ServiceContext
from meshrun.errors import MeshrunError
from meshrun.registry import LoadedService
from meshrun.transport.base import Subscription, SubscriptionState


@dataclass
class RunningService:
    loaded: LoadedService
    ctx: ServiceContext
    runner: web.AppRunner | None = None
    port: int | None = None
    subscriptions: list[Subscription] = field(default_factory=list)

    async def problems(self) -> list[str]:
        found = [s.problem or f"consumer of {s.topic} has not joined {s.group}" for s in self.subscriptions
                 if s.state is not SubscriptionState.ASSIGNED or s.problem]
        try:
            await self.ctx.store.store.check()
        except MeshrunError as exc:
            found.append(str(exc))
        if self.ctx.guard is not None:
            problem = await self.ctx.guard.ready()
            if problem:
                found.append(problem)
        for check in self.loaded.service.ready_checks:
            try:
                problem = await check(self.ctx)
            except Exception as exc:  # a failing check means not ready, not a crash
                problem = f"{check.__name__}: {type(exc).__name__}: {exc}"
            if problem:
                found.append(problem)
        return found
