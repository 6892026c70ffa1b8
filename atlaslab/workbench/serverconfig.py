"""What every user's server loads, one machine or Kubernetes (the local spawner's arguments, the images' config)."""

# The workbench panel's server side (environment, credits, runs, Dask), and dask-labextension's dashboard check
# taught to find dashboards behind the user's own server (its stock check fetches them without credentials and
# meets the hub's login).
SERVER_EXTENSIONS = ("atlaslab.workbench", "atlaslab.compute.dashboard")
# Kernel websockets with TCP_NODELAY: without it every cell's reply waits ~40 ms on delayed ACKs.
KERNEL_WEBSOCKET = "atlaslab.workbench.singleuser.NoDelayKernelConnection"
# jupyter_lsp serves JupyterLab's language-server features (off by default) and needs a language server; without
# one installed it only costs ~0.2 s per start, so it is loaded only when one of these modules is importable.
LANGUAGE_SERVER_MODULES = ("pylsp", "jedi_language_server")
