"""Turns a site config into JupyterHub settings: auth, spawner and profiles, groups and roles, services."""
