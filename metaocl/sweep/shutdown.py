"""Ending a process that hosted a Ray driver, without the crash at exit that Ray's native threads cause.

``ray.shutdown()`` leaves native threads running in the driver's process (seen with gdb on Ray
2.60): OpenCensus' stats harvester (``DeltaProducer::RunHarvesterLoop``), one OpenTelemetry
``PeriodicExportingMetricReader`` per Ray session, gRPC's event engine, timer and executor threads
and a GCS client io thread. A normal exit finalizes Python and then runs the C++ static destructors
of ``_raylet.so`` while those threads still wake up and read the state being freed. CI saw it: the
whole test suite passed in one process that had hosted several Ray sessions, then the process died
with SIGSEGV in ``std::_Hash_bytes`` on a non-main thread (exit 139, a failed run). Ray's own
reports: ray-project/ray#31145, #36885. It is a race, so rare per exit and never reproduced on
demand here; any process that called ``ray.init`` has it.

:func:`exit_process` ends such a process the way Python would, less that C++ teardown: non-daemon
threads are joined (``threading._shutdown``, as at a normal exit), every ``atexit`` handler runs
(Ray's own shutdown hook, logging, MLflow, temporary folders), stdout and stderr are flushed, then
``os._exit(code)``. A process that never imported Ray exits the normal way.

Used by the ``metaocl`` command (:func:`metaocl.cli.console`) and the test suite (tests/conftest.py).
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
from typing import NoReturn


def exit_code(code: object) -> int:
    """What Python makes of ``sys.exit(code)``: None -> 0, an int as is, anything else printed -> 1."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def hosts_ray() -> bool:
    """Whether this process loaded Ray (and so may hold its native threads): exit through :func:`exit_process`."""
    return "ray" in sys.modules


def exit_process(code: object = 0) -> NoReturn:
    """End this process with ``code`` (as ``sys.exit`` reads it); see the module docstring."""
    status = exit_code(code)
    if not hosts_ray():  # no Ray, no leftover native threads: the normal exit
        sys.exit(status)
    shutdown = getattr(threading, "_shutdown", None)
    if shutdown is not None:  # CPython joins non-daemon threads first at exit (3.8 to 3.14)
        shutdown()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # closed, or a pipe whose reader left
            pass
    os._exit(status)
