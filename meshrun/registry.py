"""Which services run: import the modules named in services.toml, check them against the file, select --only.

Reads declarations only; starting anything is the runtime's job.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Iterable

from meshrun.config import MeshConfig, ServiceConfig
from meshrun.errors import ConfigError, SettingsError
from meshrun.service import Service


@dataclass(frozen=True)
class LoadedService:
    config: ServiceConfig
    service: Service
    settings: Any

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def topics(self) -> list[str]:
        return sorted({s.topic for s in self.service.subscribers})


def select(config: MeshConfig, only: Iterable[str] = (), exclude: Iterable[str] = ()) -> list[str]:
    only, exclude = [n for n in only if n], [n for n in exclude if n]
    problems = []
    for flag, names in (("--only", only), ("--except", exclude)):
        for name in names:
            if name not in config.services:
                problems.append(f"{flag}: unknown service {name!r} (services: {', '.join(config.services)})")
    if problems:
        raise ConfigError(config.file, problems)
    chosen = [n for n in config.services if (not only or n in only) and n not in exclude]
    if not chosen:
        raise ConfigError(config.file, ["no service left to run after --only/--except"])
    return chosen


def import_service(module_path: str) -> Service:
    """Import `pkg.module` (its `service` attribute) or `pkg.module:attribute`."""
    module_name, _, attribute = module_path.partition(":")
    module = importlib.import_module(module_name)
    service = getattr(module, attribute or "service", None)
    if not isinstance(service, Service):
        raise LookupError(f"{module_name!r} has no `{attribute or 'service'} = Service(...)`")
    return service


def load_services(config: MeshConfig, names: Iterable[str] | None = None) -> list[LoadedService]:
    """Import and check the named services (default: all); raises ConfigError listing every problem."""
    problems: list[str] = []
    loaded: list[LoadedService] = []
    for name in names if names is not None else config.services:
        sc = config.services[name]
        key = f"services.{name}"
        try:
            service = import_service(sc.module)
        except Exception as exc:  # an import error of user code must not become a traceback
            problems.append(f"{key}.module: cannot load {sc.module!r}: {type(exc).__name__}: {exc}")
            continue
        if service.routes and sc.port is None:
            problems.append(f"{key}.port: missing (the service declares HTTP routes)")
        if service.subscribers and not sc.group:
            topics = ", ".join(sorted({s.topic for s in service.subscribers}))
            problems.append(f"{key}.group: missing (the service consumes {topics})")
        for topic in sorted({s.topic for s in service.subscribers} | service.publishes):
            if topic not in config.topics:
                problems.append(f"{key}: topic {topic!r} is not declared (add a [topics.{topic}] table)")
        settings: Any = sc.settings
        if service.settings is not None:
            try:
                settings = service.settings(sc.settings, f"{key}.settings")
            except SettingsError as exc:
                problems.extend(exc.problems)
        elif sc.settings:
            problems.append(f"{key}.settings: the service takes no settings")
        loaded.append(LoadedService(sc, service, settings))
    if problems:
        raise ConfigError(config.file, problems)
    return loaded
