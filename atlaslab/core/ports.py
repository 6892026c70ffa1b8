"""Fixed ports on 127.0.0.1 for AtlasLab's own services, counted from ``site.service_ports``.

Fixed offsets (not "the next free one") so that applying the config twice, or restarting the hub, gives every
service the same address, and a service added later does not move the others.
"""

from __future__ import annotations

from atlaslab.config import LoadedConfig

EXCHANGE = 0
AUTOGRADER = 1
TRACKING = 2
CREDITS = 3
FIRST_FORMGRADER = 10  # then one per course, in site-config order


def service_port(loaded: LoadedConfig, offset: int) -> int:
    return loaded.site.site.service_ports + offset


def formgrader_port(loaded: LoadedConfig, course: str) -> int:
    return service_port(loaded, FIRST_FORMGRADER + list(loaded.site.courses).index(course))
