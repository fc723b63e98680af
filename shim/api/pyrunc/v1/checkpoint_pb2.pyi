from google.protobuf import any_pb2 as _any_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CheckpointOptions(_message.Message):
    __slots__ = ("exit", "open_tcp", "external_unix_sockets", "terminal", "file_locks", "empty_namespaces", "cgroups_mode", "image_path", "work_path", "parent_path", "pre_dump", "auto_dedup", "lazy_pages", "page_server", "status_fd", "tcp_close", "tcp_skip_in_flight", "link_remap", "ghost_limit", "network_lock", "track_mem", "tls_cacert", "tls_cert", "tls_key", "tls_no_cn_verify")
    EXIT_FIELD_NUMBER: _ClassVar[int]
    OPEN_TCP_FIELD_NUMBER: _ClassVar[int]
    EXTERNAL_UNIX_SOCKETS_FIELD_NUMBER: _ClassVar[int]
    TERMINAL_FIELD_NUMBER: _ClassVar[int]
    FILE_LOCKS_FIELD_NUMBER: _ClassVar[int]
    EMPTY_NAMESPACES_FIELD_NUMBER: _ClassVar[int]
    CGROUPS_MODE_FIELD_NUMBER: _ClassVar[int]
    IMAGE_PATH_FIELD_NUMBER: _ClassVar[int]
    WORK_PATH_FIELD_NUMBER: _ClassVar[int]
    PARENT_PATH_FIELD_NUMBER: _ClassVar[int]
    PRE_DUMP_FIELD_NUMBER: _ClassVar[int]
    AUTO_DEDUP_FIELD_NUMBER: _ClassVar[int]
    LAZY_PAGES_FIELD_NUMBER: _ClassVar[int]
    PAGE_SERVER_FIELD_NUMBER: _ClassVar[int]
    STATUS_FD_FIELD_NUMBER: _ClassVar[int]
    TCP_CLOSE_FIELD_NUMBER: _ClassVar[int]
    TCP_SKIP_IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    LINK_REMAP_FIELD_NUMBER: _ClassVar[int]
    GHOST_LIMIT_FIELD_NUMBER: _ClassVar[int]
    NETWORK_LOCK_FIELD_NUMBER: _ClassVar[int]
    TRACK_MEM_FIELD_NUMBER: _ClassVar[int]
    TLS_CACERT_FIELD_NUMBER: _ClassVar[int]
    TLS_CERT_FIELD_NUMBER: _ClassVar[int]
    TLS_KEY_FIELD_NUMBER: _ClassVar[int]
    TLS_NO_CN_VERIFY_FIELD_NUMBER: _ClassVar[int]
    exit: bool
    open_tcp: bool
    external_unix_sockets: bool
    terminal: bool
    file_locks: bool
    empty_namespaces: _containers.RepeatedScalarFieldContainer[str]
    cgroups_mode: str
    image_path: str
    work_path: str
    parent_path: str
    pre_dump: bool
    auto_dedup: bool
    lazy_pages: bool
    page_server: str
    status_fd: int
    tcp_close: bool
    tcp_skip_in_flight: bool
    link_remap: bool
    ghost_limit: int
    network_lock: str
    track_mem: bool
    tls_cacert: str
    tls_cert: str
    tls_key: str
    tls_no_cn_verify: bool
    def __init__(self, exit: bool = ..., open_tcp: bool = ..., external_unix_sockets: bool = ..., terminal: bool = ..., file_locks: bool = ..., empty_namespaces: _Optional[_Iterable[str]] = ..., cgroups_mode: _Optional[str] = ..., image_path: _Optional[str] = ..., work_path: _Optional[str] = ..., parent_path: _Optional[str] = ..., pre_dump: bool = ..., auto_dedup: bool = ..., lazy_pages: bool = ..., page_server: _Optional[str] = ..., status_fd: _Optional[int] = ..., tcp_close: bool = ..., tcp_skip_in_flight: bool = ..., link_remap: bool = ..., ghost_limit: _Optional[int] = ..., network_lock: _Optional[str] = ..., track_mem: bool = ..., tls_cacert: _Optional[str] = ..., tls_cert: _Optional[str] = ..., tls_key: _Optional[str] = ..., tls_no_cn_verify: bool = ...) -> None: ...

class RestoreOptions(_message.Message):
    __slots__ = ("image_path", "work_path", "tcp_close", "lazy_pages", "page_server", "runtime_options", "tls_cacert", "tls_cert", "tls_key", "tls_no_cn_verify")
    IMAGE_PATH_FIELD_NUMBER: _ClassVar[int]
    WORK_PATH_FIELD_NUMBER: _ClassVar[int]
    TCP_CLOSE_FIELD_NUMBER: _ClassVar[int]
    LAZY_PAGES_FIELD_NUMBER: _ClassVar[int]
    PAGE_SERVER_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_OPTIONS_FIELD_NUMBER: _ClassVar[int]
    TLS_CACERT_FIELD_NUMBER: _ClassVar[int]
    TLS_CERT_FIELD_NUMBER: _ClassVar[int]
    TLS_KEY_FIELD_NUMBER: _ClassVar[int]
    TLS_NO_CN_VERIFY_FIELD_NUMBER: _ClassVar[int]
    image_path: str
    work_path: str
    tcp_close: bool
    lazy_pages: bool
    page_server: str
    runtime_options: _any_pb2.Any
    tls_cacert: str
    tls_cert: str
    tls_key: str
    tls_no_cn_verify: bool
    def __init__(self, image_path: _Optional[str] = ..., work_path: _Optional[str] = ..., tcp_close: bool = ..., lazy_pages: bool = ..., page_server: _Optional[str] = ..., runtime_options: _Optional[_Union[_any_pb2.Any, _Mapping]] = ..., tls_cacert: _Optional[str] = ..., tls_cert: _Optional[str] = ..., tls_key: _Optional[str] = ..., tls_no_cn_verify: bool = ...) -> None: ...
