from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GetNodeStateRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetNodeStateResponse(_message.Message):
    __slots__ = ("state", "devices")
    STATE_FIELD_NUMBER: _ClassVar[int]
    DEVICES_FIELD_NUMBER: _ClassVar[int]
    state: NodeStateEvent
    devices: _containers.RepeatedCompositeFieldContainer[Device]
    def __init__(self, state: _Optional[_Union[NodeStateEvent, _Mapping]] = ..., devices: _Optional[_Iterable[_Union[Device, _Mapping]]] = ...) -> None: ...

class Device(_message.Message):
    __slots__ = ("resource", "id", "pci_address", "numa_node", "pod_uid")
    RESOURCE_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    PCI_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    NUMA_NODE_FIELD_NUMBER: _ClassVar[int]
    POD_UID_FIELD_NUMBER: _ClassVar[int]
    resource: str
    id: str
    pci_address: str
    numa_node: int
    pod_uid: str
    def __init__(self, resource: _Optional[str] = ..., id: _Optional[str] = ..., pci_address: _Optional[str] = ..., numa_node: _Optional[int] = ..., pod_uid: _Optional[str] = ...) -> None: ...

class WatchNodeStateRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class NodeStateEvent(_message.Message):
    __slots__ = ("node_name", "generation", "agent_instance", "topology_json", "allocations_json", "reserved_pod_uids", "report_version", "not_applying")
    NODE_NAME_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    AGENT_INSTANCE_FIELD_NUMBER: _ClassVar[int]
    TOPOLOGY_JSON_FIELD_NUMBER: _ClassVar[int]
    ALLOCATIONS_JSON_FIELD_NUMBER: _ClassVar[int]
    RESERVED_POD_UIDS_FIELD_NUMBER: _ClassVar[int]
    REPORT_VERSION_FIELD_NUMBER: _ClassVar[int]
    NOT_APPLYING_FIELD_NUMBER: _ClassVar[int]
    node_name: str
    generation: int
    agent_instance: str
    topology_json: str
    allocations_json: str
    reserved_pod_uids: _containers.RepeatedScalarFieldContainer[str]
    report_version: int
    not_applying: str
    def __init__(self, node_name: _Optional[str] = ..., generation: _Optional[int] = ..., agent_instance: _Optional[str] = ..., topology_json: _Optional[str] = ..., allocations_json: _Optional[str] = ..., reserved_pod_uids: _Optional[_Iterable[str]] = ..., report_version: _Optional[int] = ..., not_applying: _Optional[str] = ...) -> None: ...

class ListAllocationsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListAllocationsResponse(_message.Message):
    __slots__ = ("generation", "allocations_json", "reserved_pod_uids")
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    ALLOCATIONS_JSON_FIELD_NUMBER: _ClassVar[int]
    RESERVED_POD_UIDS_FIELD_NUMBER: _ClassVar[int]
    generation: int
    allocations_json: str
    reserved_pod_uids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, generation: _Optional[int] = ..., allocations_json: _Optional[str] = ..., reserved_pod_uids: _Optional[_Iterable[str]] = ...) -> None: ...

class ApplyRequest(_message.Message):
    __slots__ = ("allocation_json", "runtime")
    ALLOCATION_JSON_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_FIELD_NUMBER: _ClassVar[int]
    allocation_json: str
    runtime: PodRuntime
    def __init__(self, allocation_json: _Optional[str] = ..., runtime: _Optional[_Union[PodRuntime, _Mapping]] = ...) -> None: ...

class PodRuntime(_message.Message):
    __slots__ = ("qos_class", "container_ids", "netns")
    QOS_CLASS_FIELD_NUMBER: _ClassVar[int]
    CONTAINER_IDS_FIELD_NUMBER: _ClassVar[int]
    NETNS_FIELD_NUMBER: _ClassVar[int]
    qos_class: str
    container_ids: _containers.RepeatedScalarFieldContainer[str]
    netns: str
    def __init__(self, qos_class: _Optional[str] = ..., container_ids: _Optional[_Iterable[str]] = ..., netns: _Optional[str] = ...) -> None: ...

class ApplyResponse(_message.Message):
    __slots__ = ("generation", "reserved")
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    RESERVED_FIELD_NUMBER: _ClassVar[int]
    generation: int
    reserved: bool
    def __init__(self, generation: _Optional[int] = ..., reserved: _Optional[bool] = ...) -> None: ...

class ReleaseRequest(_message.Message):
    __slots__ = ("pod_uid",)
    POD_UID_FIELD_NUMBER: _ClassVar[int]
    pod_uid: str
    def __init__(self, pod_uid: _Optional[str] = ...) -> None: ...

class ReleaseResponse(_message.Message):
    __slots__ = ("generation",)
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    generation: int
    def __init__(self, generation: _Optional[int] = ...) -> None: ...
