"""A stress worker process, started by the driver as
``python -m kernelsight.stress.worker CATEGORY PARAMS_JSON``: runs one workload until its
deadline, a signal, or its parent's death, then prints its counts as one JSON line."""

from __future__ import annotations

import json
import os
import resource
import signal
import sys
import time
import traceback
from pathlib import Path

from kernelsight.stress import registry
from kernelsight.stress.context import Ctx


def main() -> None:
    """Entry point of a worker process: argv = [category, params-json]. Prints one JSON line
    of counts on stdout, also after SIGTERM or a failure (with "error"), then exits."""
    category, raw = sys.argv[1], sys.argv[2]
    p = json.loads(raw)
    ctx = Ctx(deadline=float(p["deadline"]), workdir=Path(p["workdir"]),
              parent=int(p["parent"]), params=p)

    def on_signal(*_: object) -> None:
        ctx.stopping = True

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    t0 = time.monotonic()
    code = 0
    try:
        registry.get(category).run(ctx)
    except Exception as e:  # noqa: BLE001 - reported with the partial counts; traceback to log
        traceback.print_exc()
        ctx.res["error"] = f"{type(e).__name__}: {e}"
        code = 1
    ru_self = resource.getrusage(resource.RUSAGE_SELF)
    ru_kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    ctx.res["seconds"] = round(time.monotonic() - t0, 3)
    ctx.res["cpu_seconds"] = round(ru_self.ru_utime + ru_self.ru_stime + ru_kids.ru_utime
                                   + ru_kids.ru_stime, 3)
    try:
        sys.stdout.write(json.dumps(ctx.res) + "\n")
        sys.stdout.flush()
    except BrokenPipeError:  # the driver is gone (SIGKILLed): nobody to report to
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    main()
