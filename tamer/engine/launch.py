"""`python -m tamer.engine.launch TORCHRUN_ARGS...`: torchrun (torch.distributed.run) as the child of a
supervisor, for runs on several GPUs.

It only adds what supervision needs: it dies with the supervisor (PR_SET_PDEATHSIG), and it names
itself as the parent its ranks must die with (TAMER_PARENT_PID; each rank sets its own PDEATHSIG). The
supervisor passes `--max-restarts 0`: restarts, and the plan they use, are the supervisor's decision.
When one rank fails, torchrun stops the others (SIGTERM, which kills a rank at once even inside a
collective) and exits non-zero; the ranks' exit reports say what happened.
"""

from __future__ import annotations

import os
import sys

from tamer import protocol
from tamer.protocol import die_with_parent


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if os.environ.get(protocol.SUPERVISOR_PID_VARIABLE):
        die_with_parent(int(os.environ[protocol.SUPERVISOR_PID_VARIABLE]))
    os.environ[protocol.PARENT_PID_VARIABLE] = str(os.getpid())
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun

    try:
        torchrun(argv)
    except ChildFailedError:
        return 1  # torchrun printed which rank failed; the supervisor reads the ranks' reports
    return 0


if __name__ == "__main__":
    sys.exit(main())
