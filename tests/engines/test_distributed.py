"""end_distributed_run: a torchrun rank leaves with exit status 0 once its writers are closed and its
streams flushed, without running anything after it; outside torchrun the caller goes on."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from spine_app.engines.distributed import TORCHRUN_ENV

SCRIPT = textwrap.dedent(
    """
    import sys
    from spine_app.engines.distributed import end_distributed_run

    class Writer:
        def close(self):
            print("closed")

    print("before", end="")  # no newline: only the flush gets it out before os._exit
    sys.stdout.write(" ")
    end_distributed_run([Writer(), None])
    print("after")
    sys.exit(3)
    """
)


def _run(env_value: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != TORCHRUN_ENV}
    if env_value is not None:
        env[TORCHRUN_ENV] = env_value
    return subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=600, env=env)


def test_a_torchrun_rank_ends_there_with_status_zero_and_its_output_flushed() -> None:
    done = _run("run-1")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["before", "closed"]


def test_outside_torchrun_the_caller_goes_on() -> None:
    done = _run(None)
    assert done.returncode == 3, done.stderr
    assert done.stdout.split() == ["before", "closed", "after"]
