"""Checkpoint/restore: the option translation (:mod:`shim.checkpoint.plan`) and CRIU tooling.

Only the plan's public API is re-exported here; other modules of the package (e.g. the CRIU
RPC client) are imported by their own names.
"""

from shim.checkpoint.plan import (
    ANNOTATION_PREFIX,
    ANNOTATIONS,
    CRIU_VERSION_FLOOR,
    CRIU_VERSION_NETWORK_LOCK,
    GHOST_LIMIT_MAX,
    OPTION_TYPES,
    STATUS_FD,
    STORED_PLAN,
    STORED_PLAN_VERSION,
    CgroupMode,
    CheckpointPlan,
    Namespace,
    NetworkLock,
    PageServer,
    RestoreSource,
    checkpoint_args,
    criu_config,
    dump_network_lock,
    dump_plan,
    load_plan,
    plan_checkpoint,
    plan_restore,
    restore_args,
    restore_source,
)

__all__ = [
    "ANNOTATIONS",
    "ANNOTATION_PREFIX",
    "CRIU_VERSION_FLOOR",
    "CRIU_VERSION_NETWORK_LOCK",
    "GHOST_LIMIT_MAX",
    "OPTION_TYPES",
    "STATUS_FD",
    "STORED_PLAN",
    "STORED_PLAN_VERSION",
    "CgroupMode",
    "CheckpointPlan",
    "Namespace",
    "NetworkLock",
    "PageServer",
    "RestoreSource",
    "checkpoint_args",
    "criu_config",
    "dump_network_lock",
    "dump_plan",
    "load_plan",
    "plan_checkpoint",
    "plan_restore",
    "restore_args",
    "restore_source",
]
