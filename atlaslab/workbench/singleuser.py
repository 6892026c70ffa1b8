"""How AtlasLab starts a user's server: ``python -m atlaslab.workbench.singleuser`` is jupyterhub-singleuser, faster.

Measured on a 2-core machine (docs/benchmarks.md), jupyterhub-singleuser spends about 2.2 s before it
listens, and half of that is work a server never uses:

* ``jupyter_events`` imports ``jsonschema``, which imports ``rfc3987_syntax`` to check the "iri" string
  format; that module builds some thirty Earley parsers at import, ~0.9 s of CPU. Here it is replaced by
  a stand-in that imports the real module the first time an "iri" value is actually checked.
* ``jupyterlab.labapp`` calls ``get_app_version()`` at import, which runs ``node yarn.js config`` (~0.3 s
  and a Node process) to learn the npm registry, an answer serving JupyterLab never uses. That one import
  runs with the probe answering "no yarn config"; later build commands get the real probe back.

It also supplies the kernel websocket connection class that turns off Nagle's algorithm (see
:class:`NoDelayKernelConnection`). Everything else is jupyterhub-singleuser unchanged.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types

# Modules whose import is slow and whose use is rare: name -> functions other modules import from them.
LAZY_MODULES = {"rfc3987_syntax": ("is_valid_syntax",)}


class _LazyModule(types.ModuleType):
    """Stands in for a module until something uses it, then imports the real one and delegates to it."""

    def __init__(self, name: str, functions: tuple[str, ...]):
        super().__init__(name)
        for function in functions:
            setattr(self, function, self._deferred(function))

    def _real(self) -> types.ModuleType:
        if sys.modules.get(self.__name__) is self:
            del sys.modules[self.__name__]
        return importlib.import_module(self.__name__)

    def _deferred(self, function: str):
        def call(*args, **kwargs):
            return getattr(self._real(), function)(*args, **kwargs)

        call.__name__ = function
        return call

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(self._real(), name)


def defer_slow_imports() -> None:
    for name, functions in LAZY_MODULES.items():
        if name not in sys.modules and importlib.util.find_spec(name) is not None:
            sys.modules[name] = _LazyModule(name, functions)


def import_jupyterlab_without_yarn_probe(argv: list[str]) -> None:
    if any(arg.replace(" ", "").endswith("jpserver_extensions=jupyterlab=False") for arg in argv):
        return
    try:
        from jupyterlab import commands
    except ImportError:
        return
    probe = getattr(commands, "_yarn_config", None)
    if probe is None:  # a JupyterLab without the probe: nothing to skip
        return
    commands._yarn_config = lambda logger: {"yarn config": {}, "npm config": {}}
    try:
        import jupyterlab.labapp  # noqa: F401
    except Exception:
        pass  # the server imports it again and reports the error where the operator looks
    finally:
        commands._yarn_config = probe


def __getattr__(name: str):
    # The connection class is built on first use, so that importing this module as the server's entry point
    # does not import jupyter_server before defer_slow_imports() has run.
    if name == "NoDelayKernelConnection":
        from jupyter_server.services.kernels.connection.channels import ZMQChannelsWebsocketConnection

        class NoDelayKernelConnection(ZMQChannelsWebsocketConnection):
            """Kernel websocket with TCP_NODELAY, so small frames leave at once.

            Tornado leaves Nagle's algorithm on for websockets. A cell's reply is several small frames
            (status busy, execute_input, result, status idle); with Nagle on, each frame after the first
            waits for the ACK of the previous one, and the receiver (the proxy, or a browser) delays that
            ACK by up to 40 ms: a trivial cell took ~48 ms instead of ~4 ms, through the proxy or not.
            """

            def connect(self):
                self.websocket_handler.set_nodelay(True)
                return super().connect()

        globals()[name] = NoDelayKernelConnection
        return NoDelayKernelConnection
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def main() -> int:
    defer_slow_imports()
    import_jupyterlab_without_yarn_probe(sys.argv[1:])
    from jupyterhub.singleuser import main as singleuser_main

    return singleuser_main()


if __name__ == "__main__":
    sys.exit(main())
