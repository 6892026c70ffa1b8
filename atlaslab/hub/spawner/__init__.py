"""The local spawner (:class:`AtlasLabSpawner`) and the small objects its ``start()`` hands work to."""

from .local import AtlasLabSpawner

__all__ = ["AtlasLabSpawner"]
