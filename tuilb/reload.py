"""What a configuration reload may change in place, decided as pure code.

Applied in place: listeners added (bound first: a port in use refuses the whole reload),
removed (the socket closes, its connections finish) or changed (a new proxy takes over
the same socket, so nothing queued is lost; a new address binds a new socket), pools
added, removed (when no listener uses them) or changed, their backends added, removed (a
removed backend drains first and leaves once idle) or changed (address, weight,
max_connections), balancing algorithms, health settings, timeouts and limits (new
connections get them). Refused, with a message saying a restart is needed: `[admin]` and
`[state]` changes. A refused or invalid reload changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from tuilb.config import Config


@dataclass(frozen=True, slots=True)
class Plan:
    listeners_added: tuple[str, ...] = ()
    listeners_removed: tuple[str, ...] = ()
    listeners_changed: tuple[str, ...] = ()  # a new proxy (and maybe socket) for each
    pools_added: tuple[str, ...] = ()
    pools_removed: tuple[str, ...] = ()
    pools_changed: tuple[str, ...] = ()
    backends_added: tuple[str, ...] = ()  # "pool/backend"
    backends_removed: tuple[str, ...] = ()
    backends_changed: tuple[str, ...] = ()
    health_changed: tuple[str, ...] = ()  # pools whose checks restart
    settings_changed: tuple[str, ...] = ()  # pools whose own settings (not backends) changed
    blockers: tuple[str, ...] = field(default=())

    @property
    def empty(self) -> bool:
        return not (
            self.listeners_added
            or self.listeners_removed
            or self.listeners_changed
            or self.pools_added
            or self.pools_removed
            or self.pools_changed
            or self.backends_added
            or self.backends_removed
            or self.backends_changed
        )

    def summary(self) -> str:
        parts = [
            (self.listeners_added, "listeners added"),
            (self.listeners_removed, "listeners removed"),
            (self.listeners_changed, "listeners changed"),
            (self.pools_added, "pools added"),
            (self.pools_removed, "pools removed"),
            (self.backends_added, "backends added"),
            (self.backends_removed, "backends removed (draining)"),
            (self.backends_changed, "backends changed"),
            (self.health_changed, "health checks restarted"),
        ]
        said = [f"{label}: {', '.join(names)}" for names, label in parts if names]
        if self.settings_changed:
            said.append(f"pool settings changed: {', '.join(self.settings_changed)}")
        return "; ".join(said) or "no changes"


def plan(old: Config, new: Config) -> Plan:
    blockers: list[str] = []
    for what, a, b in (
        ("[admin]", old.admin, new.admin),
        ("[state]", old.state_file, new.state_file),
    ):
        if a != b:
            blockers.append(f"{what} changed: restart tuilb to apply")
    used = {listener.pool for listener in new.listeners} | {
        route.pool for listener in new.listeners for route in listener.http.routes
    }
    removed = tuple(name for name in old.pools if name not in new.pools)
    for name in removed:
        if name in used:  # pragma: no cover - the config check already refuses this
            blockers.append(f"pool {name!r} is removed but still used")
    added = tuple(name for name in new.pools if name not in old.pools)
    changed: list[str] = []
    settings: list[str] = []
    health: list[str] = []
    b_added: list[str] = []
    b_removed: list[str] = []
    b_changed: list[str] = []
    for name, pool in new.pools.items():
        before = old.pools.get(name)
        if before is None or before == pool:
            continue
        changed.append(name)
        if replace(before, backends=()) != replace(pool, backends=()):
            settings.append(name)
        if before.health != pool.health or before.passive != pool.passive:
            health.append(name)
        old_backends = {b.name: b for b in before.backends}
        new_backends = {b.name: b for b in pool.backends}
        b_added += [f"{name}/{b}" for b in new_backends if b not in old_backends]
        b_removed += [f"{name}/{b}" for b in old_backends if b not in new_backends]
        b_changed += [
            f"{name}/{b}"
            for b, config in new_backends.items()
            if b in old_backends and old_backends[b] != config
        ]
    old_listeners = {x.name: x for x in old.listeners}
    new_listeners = {x.name: x for x in new.listeners}
    every = old.timeouts != new.timeouts or old.limits != new.limits  # every proxy renewed
    return Plan(
        listeners_added=tuple(n for n in new_listeners if n not in old_listeners),
        listeners_removed=tuple(n for n in old_listeners if n not in new_listeners),
        listeners_changed=tuple(
            n
            for n, x in new_listeners.items()
            if n in old_listeners and (every or old_listeners[n] != x)
        ),
        pools_added=added,
        pools_removed=removed,
        pools_changed=tuple(changed),
        backends_added=tuple(b_added),
        backends_removed=tuple(b_removed),
        backends_changed=tuple(b_changed),
        health_changed=tuple(health + [p for p in added if new.pools[p].health.active]),
        settings_changed=tuple(settings),
        blockers=tuple(blockers),
    )
