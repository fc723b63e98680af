from google.protobuf import any_pb2 as _any_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Method(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    METHOD_UNSPECIFIED: _ClassVar[Method]
    STOP_AND_COPY: _ClassVar[Method]
    LAZY: _ClassVar[Method]

class Part(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PART_UNSPECIFIED: _ClassVar[Part]
    IMAGE: _ClassVar[Part]
    ROOTFS_DIFF: _ClassVar[Part]
    CRIU_IMAGES: _ClassVar[Part]
    ROOTFS_REDO: _ClassVar[Part]
    NETWORK: _ClassVar[Part]
    ROOTFS_KEEP: _ClassVar[Part]
METHOD_UNSPECIFIED: Method
STOP_AND_COPY: Method
LAZY: Method
PART_UNSPECIFIED: Part
IMAGE: Part
ROOTFS_DIFF: Part
CRIU_IMAGES: Part
ROOTFS_REDO: Part
NETWORK: Part
ROOTFS_KEEP: Part

class ProbeRequest(_message.Message):
    __slots__ = ("cpuinfo", "snapshotter", "parent_snapshot", "namespace", "container_id", "bytes_needed")
    CPUINFO_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOTTER_FIELD_NUMBER: _ClassVar[int]
    PARENT_SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    CONTAINER_ID_FIELD_NUMBER: _ClassVar[int]
    BYTES_NEEDED_FIELD_NUMBER: _ClassVar[int]
    cpuinfo: bytes
    snapshotter: str
    parent_snapshot: str
    namespace: str
    container_id: str
    bytes_needed: int
    def __init__(self, cpuinfo: _Optional[bytes] = ..., snapshotter: _Optional[str] = ..., parent_snapshot: _Optional[str] = ..., namespace: _Optional[str] = ..., container_id: _Optional[str] = ..., bytes_needed: _Optional[int] = ...) -> None: ...

class HostFacts(_message.Message):
    __slots__ = ("kernel", "machine", "criu_version", "lazy_pages", "mem_dirty_track", "pipe_max_size", "free_bytes", "hostname", "nftables_lock", "criu_tls")
    KERNEL_FIELD_NUMBER: _ClassVar[int]
    MACHINE_FIELD_NUMBER: _ClassVar[int]
    CRIU_VERSION_FIELD_NUMBER: _ClassVar[int]
    LAZY_PAGES_FIELD_NUMBER: _ClassVar[int]
    MEM_DIRTY_TRACK_FIELD_NUMBER: _ClassVar[int]
    PIPE_MAX_SIZE_FIELD_NUMBER: _ClassVar[int]
    FREE_BYTES_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    NFTABLES_LOCK_FIELD_NUMBER: _ClassVar[int]
    CRIU_TLS_FIELD_NUMBER: _ClassVar[int]
    kernel: str
    machine: str
    criu_version: int
    lazy_pages: bool
    mem_dirty_track: bool
    pipe_max_size: int
    free_bytes: int
    hostname: str
    nftables_lock: bool
    criu_tls: bool
    def __init__(self, kernel: _Optional[str] = ..., machine: _Optional[str] = ..., criu_version: _Optional[int] = ..., lazy_pages: bool = ..., mem_dirty_track: bool = ..., pipe_max_size: _Optional[int] = ..., free_bytes: _Optional[int] = ..., hostname: _Optional[str] = ..., nftables_lock: bool = ..., criu_tls: bool = ...) -> None: ...

class ProbeReply(_message.Message):
    __slots__ = ("facts", "cpu_problem", "has_parent_snapshot", "container_exists")
    FACTS_FIELD_NUMBER: _ClassVar[int]
    CPU_PROBLEM_FIELD_NUMBER: _ClassVar[int]
    HAS_PARENT_SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    CONTAINER_EXISTS_FIELD_NUMBER: _ClassVar[int]
    facts: HostFacts
    cpu_problem: str
    has_parent_snapshot: bool
    container_exists: bool
    def __init__(self, facts: _Optional[_Union[HostFacts, _Mapping]] = ..., cpu_problem: _Optional[str] = ..., has_parent_snapshot: bool = ..., container_exists: bool = ...) -> None: ...

class Begin(_message.Message):
    __slots__ = ("namespace", "container_id", "image", "labels", "runtime", "runtime_options", "spec", "snapshotter", "snapshot_key", "parent_snapshot", "method", "page_server", "tcp_established", "page_server_tls")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    CONTAINER_ID_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_OPTIONS_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOTTER_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_KEY_FIELD_NUMBER: _ClassVar[int]
    PARENT_SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    PAGE_SERVER_FIELD_NUMBER: _ClassVar[int]
    TCP_ESTABLISHED_FIELD_NUMBER: _ClassVar[int]
    PAGE_SERVER_TLS_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    container_id: str
    image: str
    labels: _containers.ScalarMap[str, str]
    runtime: str
    runtime_options: _any_pb2.Any
    spec: _any_pb2.Any
    snapshotter: str
    snapshot_key: str
    parent_snapshot: str
    method: Method
    page_server: str
    tcp_established: bool
    page_server_tls: bool
    def __init__(self, namespace: _Optional[str] = ..., container_id: _Optional[str] = ..., image: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., runtime: _Optional[str] = ..., runtime_options: _Optional[_Union[_any_pb2.Any, _Mapping]] = ..., spec: _Optional[_Union[_any_pb2.Any, _Mapping]] = ..., snapshotter: _Optional[str] = ..., snapshot_key: _Optional[str] = ..., parent_snapshot: _Optional[str] = ..., method: _Optional[_Union[Method, str]] = ..., page_server: _Optional[str] = ..., tcp_established: bool = ..., page_server_tls: bool = ...) -> None: ...

class Chunk(_message.Message):
    __slots__ = ("part", "data")
    PART_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    part: Part
    data: bytes
    def __init__(self, part: _Optional[_Union[Part, str]] = ..., data: _Optional[bytes] = ...) -> None: ...

class Prepare(_message.Message):
    __slots__ = ("page_server_host", "create_task")
    PAGE_SERVER_HOST_FIELD_NUMBER: _ClassVar[int]
    CREATE_TASK_FIELD_NUMBER: _ClassVar[int]
    page_server_host: str
    create_task: bool
    def __init__(self, page_server_host: _Optional[str] = ..., create_task: bool = ...) -> None: ...

class End(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Commit(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class MigrateRequest(_message.Message):
    __slots__ = ("begin", "chunk", "end", "commit", "prepare")
    BEGIN_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    COMMIT_FIELD_NUMBER: _ClassVar[int]
    PREPARE_FIELD_NUMBER: _ClassVar[int]
    begin: Begin
    chunk: Chunk
    end: End
    commit: Commit
    prepare: Prepare
    def __init__(self, begin: _Optional[_Union[Begin, _Mapping]] = ..., chunk: _Optional[_Union[Chunk, _Mapping]] = ..., end: _Optional[_Union[End, _Mapping]] = ..., commit: _Optional[_Union[Commit, _Mapping]] = ..., prepare: _Optional[_Union[Prepare, _Mapping]] = ...) -> None: ...

class Received(_message.Message):
    __slots__ = ("bytes",)
    BYTES_FIELD_NUMBER: _ClassVar[int]
    bytes: int
    def __init__(self, bytes: _Optional[int] = ...) -> None: ...

class Restored(_message.Message):
    __slots__ = ("pid", "forking_time", "restore_time", "pages_restored", "pages_compared", "pages_skipped_cow", "restore_us", "phases_us")
    class PhasesUsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    PID_FIELD_NUMBER: _ClassVar[int]
    FORKING_TIME_FIELD_NUMBER: _ClassVar[int]
    RESTORE_TIME_FIELD_NUMBER: _ClassVar[int]
    PAGES_RESTORED_FIELD_NUMBER: _ClassVar[int]
    PAGES_COMPARED_FIELD_NUMBER: _ClassVar[int]
    PAGES_SKIPPED_COW_FIELD_NUMBER: _ClassVar[int]
    RESTORE_US_FIELD_NUMBER: _ClassVar[int]
    PHASES_US_FIELD_NUMBER: _ClassVar[int]
    pid: int
    forking_time: int
    restore_time: int
    pages_restored: int
    pages_compared: int
    pages_skipped_cow: int
    restore_us: int
    phases_us: _containers.ScalarMap[str, int]
    def __init__(self, pid: _Optional[int] = ..., forking_time: _Optional[int] = ..., restore_time: _Optional[int] = ..., pages_restored: _Optional[int] = ..., pages_compared: _Optional[int] = ..., pages_skipped_cow: _Optional[int] = ..., restore_us: _Optional[int] = ..., phases_us: _Optional[_Mapping[str, int]] = ...) -> None: ...

class Prepared(_message.Message):
    __slots__ = ("page_server", "phases_us")
    class PhasesUsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    PAGE_SERVER_FIELD_NUMBER: _ClassVar[int]
    PHASES_US_FIELD_NUMBER: _ClassVar[int]
    page_server: str
    phases_us: _containers.ScalarMap[str, int]
    def __init__(self, page_server: _Optional[str] = ..., phases_us: _Optional[_Mapping[str, int]] = ...) -> None: ...

class MigrateReply(_message.Message):
    __slots__ = ("received", "restored", "prepared")
    RECEIVED_FIELD_NUMBER: _ClassVar[int]
    RESTORED_FIELD_NUMBER: _ClassVar[int]
    PREPARED_FIELD_NUMBER: _ClassVar[int]
    received: Received
    restored: Restored
    prepared: Prepared
    def __init__(self, received: _Optional[_Union[Received, _Mapping]] = ..., restored: _Optional[_Union[Restored, _Mapping]] = ..., prepared: _Optional[_Union[Prepared, _Mapping]] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ("namespace", "container_id")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    CONTAINER_ID_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    container_id: str
    def __init__(self, namespace: _Optional[str] = ..., container_id: _Optional[str] = ...) -> None: ...

class StatusReply(_message.Message):
    __slots__ = ("status", "exit_status", "lazy_pages_running")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    EXIT_STATUS_FIELD_NUMBER: _ClassVar[int]
    LAZY_PAGES_RUNNING_FIELD_NUMBER: _ClassVar[int]
    status: str
    exit_status: int
    lazy_pages_running: bool
    def __init__(self, status: _Optional[str] = ..., exit_status: _Optional[int] = ..., lazy_pages_running: bool = ...) -> None: ...
