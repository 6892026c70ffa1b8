# JupyterHub reads this file; AtlasLab turns the site config ($ATLASLAB_CONFIG or --config) into settings.
from atlaslab.config import load
from atlaslab.hub.apply import apply

apply(c, load())  # noqa: F821 (c is provided by JupyterHub)
