# Not imported by anything: `PYTHONPATH=bench/chaos_planted python -m bench.chaos --smoke
# --targets ics` plants this bug in the CLI processes the chaos script starts, to see it caught.
# A planted bug for bench/chaos.py to catch: each write of an event gets a new UID, so the
# feed no longer recognises the event it wrote (a create is no longer idempotent).
import os
import uuid

if os.environ.get("LEAVESYNC_HOME"):  # the CLI's processes only
    from resources.providers import ics

    ics.uid_for = lambda key: f"{key}-{uuid.uuid4().hex[:8]}@leavesync"
