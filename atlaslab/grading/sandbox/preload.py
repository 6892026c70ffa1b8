"""What the zygote loads once so that no notebook pays for it: the modules, and the caches they fill.

Every supervisor, executor and kernel is forked from the zygote and inherits what it imported and warmed up
here; this list (found by profiling forked processes) is where the per-notebook start-up time goes away.
It also keeps a slow optional module out, which the kernel lets back in, so it sits below both.
"""

from __future__ import annotations

import sys

PRELOAD = (
    "ipykernel.kernelapp",
    "ipykernel.ipkernel",
    "ipykernel.zmqshell",
    "ipykernel.debugger",
    "IPython.core.interactiveshell",
    "IPython.core.completer",
    "jupyter_client.asynchronous",
    "nbclient",
    "nbformat",
    "nbgrader.preprocessors.execute",
    "debugpy",
    "psutil",
    "jupyter_client.localinterfaces",
    "sqlite3",
    "pdb",
    "pydoc",
    "gzip",
    "mimetypes",
    "xmlrpc.client",
    "faulthandler",
    "unicodedata",
    "sysconfig",
    "code",
    # What a kernel imports on its first cells (profiled): traceback formatting, magics, the event loop.
    "ipykernel_launcher",
    "IPython.core.completerlib",
    "IPython.core.debugger",
    "IPython.core.logger",
    "IPython.core.oinspect",
    "IPython.extensions.storemagic",
    "IPython.utils.wildcard",
    "stack_data",
    "executing",
    "asttokens",
    "pure_eval",
    "pygments.console",
    "pygments.formatters.terminal256",
    "encodings.unicode_escape",
    "tornado.platform.asyncio",
)

SLOW_OPTIONAL = ("rfc3987_syntax",)


def skip_slow_optional_imports() -> None:
    """Keep jsonschema from importing rfc3987_syntax, which builds parsers for ~1 s of CPU at import.

    jsonschema only uses it, when installed, to check the "iri" formats, which no notebook or nbgrader
    schema uses. A kernel gets the module back (``run_kernel`` removes the block) should a student import it.
    """
    for name in SLOW_OPTIONAL:
        sys.modules.setdefault(name, None)


def warm_up() -> None:
    """Fill the caches every fork would otherwise fill again, found by profiling the forked processes."""
    import inspect

    import nbformat
    from nbgrader.preprocessors.execute import Execute

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("1")])
    # The notebook schema's compiled validator (~25 ms per executor).
    nbformat.validate(nbformat.reads(nbformat.writes(nb), as_version=4))
    Execute(timeout=1)
    # The first traceback a kernel formats makes inspect map every loaded module to its real path (one
    # lstat per path component of ~1500 files: ~90 ms per kernel); done once here, it is inherited.
    inspect.getmodule(compile("pass", "<atlaslab-warm-up>", "exec"))
