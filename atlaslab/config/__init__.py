"""The site config: schema (``schema``), loading (``loading``), problem messages (``messages``) and cross-checks
(``checks``, ``rosters``)."""

from .loading import LoadedConfig, find_config_path, load, parse
from .messages import ConfigError, Problem
from .schema import SiteConfig

__all__ = ["ConfigError", "LoadedConfig", "Problem", "SiteConfig", "find_config_path", "load", "parse"]
