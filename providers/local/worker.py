"""Per-worker shim torchrun runs before the user's command (``--no-python ... -m worker CMD``).

It maps torchrun's node-level variables onto the mlcloud contract, records each restart
generation as a job attempt (rank 0 only), then ``exec``s the command so the user's process keeps
torchrun's pid and signals.
"""

from __future__ import annotations

import os
import sys


def main(argv: list[str]) -> None:
    if not argv:
        sys.exit("usage: python -m providers.local.worker CMD [ARGS...]")
    os.environ["MLCLOUD_NODE_RANK"] = os.environ.get("GROUP_RANK", "0")
    os.environ["MLCLOUD_NUM_NODES"] = os.environ.get("GROUP_WORLD_SIZE", "1")
    db = os.environ.get("MLCLOUD_STATE_DB")
    job_id = os.environ.get("MLCLOUD_JOB_ID")
    if os.environ.get("RANK") == "0" and db and job_id:
        from mlcloud.records import JobState
        from mlcloud.store import Store

        # Each rendezvous round has its own MASTER_PORT; agents count restarts differently, so
        # the round, not TORCHELASTIC_RESTART_COUNT, identifies an attempt.
        round_id = os.environ.get("MASTER_PORT", "")
        store = Store.at(db)
        job = store.get_job(job_id)
        if job.details.get("round") != round_id:
            attempt = job.attempts + 1 if "round" in job.details else max(job.attempts, 1)
            store.update_job(
                job_id,
                state=JobState.RUNNING,
                attempts=attempt,
                merge_details={"round": round_id},
                event=f"attempt {attempt} started: world size {os.environ.get('WORLD_SIZE')}, "
                f"{os.environ['MLCLOUD_NUM_NODES']} node(s)",
            )
        store.close()
    os.execvp(argv[0], argv)  # noqa: S606 (the user's own command, argv form)


if __name__ == "__main__":
    main(sys.argv[1:])
