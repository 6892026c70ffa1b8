"""Experiment tracking: MLflow as a hub-managed service, identity and permissions from the hub.

* :mod:`.hub` wires the service into JupyterHub's config (the only module the hub imports; it never imports MLflow);
* :mod:`.server` is the service's entry point: MLflow's app with its auth app, one process, behind the hub's prefix;
* :mod:`.policy` says who may do what from hub groups and an experiment's owner (pure functions);
* :mod:`.hubapi` asks the hub who a token belongs to and which groups a user is in (short caches);
* :mod:`.grants` feeds :mod:`.policy`'s answers to MLflow's own permission machinery as role grants;
* :mod:`.auth` is MLflow's ``authorization_function`` and the guard on ownership tags;
* :mod:`.redaction` withholds links to logged models the caller may not read, per model (REST and GraphQL);
* :mod:`.web` strips the service prefix and finishes the hub's OAuth login for browsers.
"""
