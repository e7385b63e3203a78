"""Workloads: start, demand users, end, and read.

Every state change is a conditional statement (`... WHERE status = 'initialized'`), so a
call repeated after a crash or delivered twice does nothing the second time. Messages to
peers go through the outbox and leave only after the commit that decided them.

- `start`: create the workload, then (in a worker) its frames, registration and demand;
- `demand`: what the workload asks of the User Manager (users missing, users released);
- `ending`: complete, fail, stop, release late users, and the end of the grace period;
- `user_count`: the Admin Panel's user-count controls;
- `views`: status, progress and the session overviews (read only);
- `handoff`: the work handed to a worker after a commit (outbox drain, later unbinding).
"""

from supervisor.workloads.demand import demand_missing_users, register_session, release_users
from supervisor.workloads.ending import (
    complete_workloads,
    delete_workload,
    end_grace,
    end_late_users,
    fail_workload,
    overdue_unbindings,
    stop_and_delete,
)
from supervisor.workloads.handoff import send_outbox_soon, unbind_after_grace, unbind_quietly
from supervisor.workloads.start import prepare_workload, start_workload
from supervisor.workloads.user_count import get_user_count, set_user_count
from supervisor.workloads.views import (
    all_overviews,
    session_overview,
    workload_progress,
    workload_status,
)

__all__ = [
    "all_overviews",
    "complete_workloads",
    "delete_workload",
    "demand_missing_users",
    "end_grace",
    "end_late_users",
    "fail_workload",
    "get_user_count",
    "overdue_unbindings",
    "prepare_workload",
    "register_session",
    "release_users",
    "send_outbox_soon",
    "session_overview",
    "set_user_count",
    "start_workload",
    "stop_and_delete",
    "unbind_after_grace",
    "unbind_quietly",
    "workload_progress",
    "workload_status",
]
