"""What the broker reports about itself: the status reply and the periodic broker_stats line."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import psutil

if TYPE_CHECKING:
    from dispatcher.core import BrokerCore


def build(core: BrokerCore, now: float) -> dict[str, Any]:
    """The status reply: queue, workers, providers, health, supervised processes."""
    workers = core.workers
    queue = core.scheduler.queue
    return {
        "uptime": now - core.started,
        "instance": core.instance,  # this broker run (a restart gets a new one)
        **core.endpoints,
        "queued": len(queue),
        "running": workers.running(),
        "jobs": len(core.scheduler.jobs),
        "totals": dict(core.scheduler.totals),
        "workers": [
            {
                "worker": w.label,
                "provider": w.provider,
                "kind": w.kind,
                "pid": w.pid,
                "capacity": w.capacity,
                "inflight": len(w.jobs),
                "draining": w.draining,
                "last_seen": round(now - w.last_seen, 3),
                "stats": w.stats,
                "info": w.info,
                "features": sorted(w.features),
                "model_count": len(w.models),  # registered: config + live list
            }
            for w in workers
        ],
        "providers": {
            name: {
                "kind": spec.kind,
                "workers": workers.count(name),
                "paused_for": max(0.0, core.pacers[name].paused_until - now),
                **core.pacers[name].learned(),
            }
            for name, spec in core.config.providers.items()
        },
        "health": core.health.snapshot(now),
        "supervised": core.processes.snapshot(),
        "queues": {k.decode(errors="replace"): n for k, n in queue.sizes.items()},
        # shipped data's date; per live source: fetched_at, stale, error, models
        "catalog": core.catalog.catalog.status(),
        **core.status_extra(),
    }


def log_stats(core: BrokerCore, process: psutil.Process) -> None:
    """The periodic canonical line: queue depth, work in flight, totals, own footprint."""
    with process.oneshot():
        rss, cpu = process.memory_info().rss, process.cpu_percent()
    core.log.info(
        "broker_stats",
        queued=len(core.scheduler.queue),
        running=core.workers.running(),
        workers=len(core.workers),
        rss=rss,
        cpu_percent=cpu,
        **core.scheduler.totals,
    )
