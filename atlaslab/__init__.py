"""AtlasLab: an AI lab workbench on JupyterHub, driven by one site config file."""

__version__ = "0.1.0"
