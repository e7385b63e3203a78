"""Task names, queues and routes: plain data that any process may import without pulling in
Celery, the domain or the task modules (the web process sends tasks by name only)."""

PREPARE_WORKLOAD = "tasks.prepare_workload"
UNBIND_SESSION = "tasks.unbind_session"

NEW_USERS = "tasks.new_users"
FRAME_RENDERED = "tasks.frame_rendered"
FRAMES_RENDERED = "tasks.frames_rendered"
RENDERING_COMPLETED = "tasks.rendering_completed"
USER_DISCONNECTED = "tasks.user_disconnected"
ERROR_SENDING_FRAME = "tasks.error_sending_frame"

DRAIN_OUTBOX = "tasks.drain_outbox"
DEMAND_USERS = "tasks.demand_users"
RECLAIM_STALE_FRAMES = "tasks.reclaim_stale_frames"
REBALANCE = "tasks.rebalance"
RECOVER_STUCK_STARTS = "tasks.recover_stuck_starts"
REDISPATCH_INBOX = "tasks.redispatch_inbox"
FINISH_WORKLOADS = "tasks.finish_workloads"
# How often beat runs FINISH_WORKLOADS, the backstop for lost completions and unbindings.
FINISH_INTERVAL_SECONDS = 5.0
REMOVE_OLD_WORKLOADS = "tasks.remove_old_workloads"
# How often beat removes ended workloads past WORKLOAD_RETENTION_SECONDS; each run stops
# after its time budget (supervisor.maintenance.REMOVAL_TIME_BUDGET_SECONDS).
REMOVAL_INTERVAL_SECONDS = 600.0

WORKLOAD_QUEUE = "supervisor.workloads"
EVENT_QUEUE = "supervisor.events"
OUTBOX_QUEUE = "supervisor.outbox"
MAINTENANCE_QUEUE = "supervisor.maintenance"
QUEUES = (WORKLOAD_QUEUE, EVENT_QUEUE, OUTBOX_QUEUE, MAINTENANCE_QUEUE)

ROUTES = {
    PREPARE_WORKLOAD: WORKLOAD_QUEUE,
    UNBIND_SESSION: WORKLOAD_QUEUE,
    NEW_USERS: EVENT_QUEUE,
    FRAME_RENDERED: EVENT_QUEUE,
    FRAMES_RENDERED: EVENT_QUEUE,
    RENDERING_COMPLETED: EVENT_QUEUE,
    USER_DISCONNECTED: EVENT_QUEUE,
    ERROR_SENDING_FRAME: EVENT_QUEUE,
    DRAIN_OUTBOX: OUTBOX_QUEUE,
    DEMAND_USERS: MAINTENANCE_QUEUE,
    RECLAIM_STALE_FRAMES: MAINTENANCE_QUEUE,
    REBALANCE: MAINTENANCE_QUEUE,
    RECOVER_STUCK_STARTS: MAINTENANCE_QUEUE,
    REDISPATCH_INBOX: MAINTENANCE_QUEUE,
    FINISH_WORKLOADS: MAINTENANCE_QUEUE,
    REMOVE_OLD_WORKLOADS: MAINTENANCE_QUEUE,
}

# The task that handles one recorded event of each User Manager topic.
TASK_FOR_TOPIC = {
    "new-users": NEW_USERS,
    "user-frame-rendered": FRAME_RENDERED,
    "user-rendering-completed": RENDERING_COMPLETED,
    "user-disconnected": USER_DISCONNECTED,
    "user-error-sending-frame": ERROR_SENDING_FRAME,
}
# Frame uploads are handed over in batches, one FRAMES_RENDERED task per intake flush.
BATCHED_TOPICS = frozenset({"user-frame-rendered"})
