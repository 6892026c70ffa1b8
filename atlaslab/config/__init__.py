"""The site config: schema (``schema``) and loader (``loader``)."""

from .loader import ConfigError, LoadedConfig, Problem, find_config_path, load, parse
from .schema import SiteConfig

__all__ = ["ConfigError", "LoadedConfig", "Problem", "SiteConfig", "find_config_path", "load", "parse"]
