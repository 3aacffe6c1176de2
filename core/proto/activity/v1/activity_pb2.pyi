import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RejectionReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REJECTION_REASON_UNSPECIFIED: _ClassVar[RejectionReason]
    REJECTION_REASON_MISSING_FIELD: _ClassVar[RejectionReason]
    REJECTION_REASON_INVALID_VALUE: _ClassVar[RejectionReason]
    REJECTION_REASON_OUT_OF_RANGE: _ClassVar[RejectionReason]
    REJECTION_REASON_TOO_LARGE: _ClassVar[RejectionReason]
    REJECTION_REASON_DUPLICATE_ID: _ClassVar[RejectionReason]
    REJECTION_REASON_REFUSED_BY_PROCESSOR: _ClassVar[RejectionReason]
    REJECTION_REASON_PLAN_VIOLATION: _ClassVar[RejectionReason]
REJECTION_REASON_UNSPECIFIED: RejectionReason
REJECTION_REASON_MISSING_FIELD: RejectionReason
REJECTION_REASON_INVALID_VALUE: RejectionReason
REJECTION_REASON_OUT_OF_RANGE: RejectionReason
REJECTION_REASON_TOO_LARGE: RejectionReason
REJECTION_REASON_DUPLICATE_ID: RejectionReason
REJECTION_REASON_REFUSED_BY_PROCESSOR: RejectionReason
REJECTION_REASON_PLAN_VIOLATION: RejectionReason

class Activity(_message.Message):
    __slots__ = ("id", "action", "target", "user", "source_id", "metadata", "segments", "occurred_at", "source")
    ID_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    SOURCE_ID_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    OCCURRED_AT_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    id: str
    action: str
    target: Target
    user: User
    source_id: str
    metadata: Metadata
    segments: _containers.RepeatedScalarFieldContainer[str]
    occurred_at: _timestamp_pb2.Timestamp
    source: Source
    def __init__(self, id: _Optional[str] = ..., action: _Optional[str] = ..., target: _Optional[_Union[Target, _Mapping]] = ..., user: _Optional[_Union[User, _Mapping]] = ..., source_id: _Optional[str] = ..., metadata: _Optional[_Union[Metadata, _Mapping]] = ..., segments: _Optional[_Iterable[str]] = ..., occurred_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., source: _Optional[_Union[Source, _Mapping]] = ...) -> None: ...

class Source(_message.Message):
    __slots__ = ("type", "name", "variant", "position", "result_count")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    RESULT_COUNT_FIELD_NUMBER: _ClassVar[int]
    type: str
    name: str
    variant: str
    position: int
    result_count: int
    def __init__(self, type: _Optional[str] = ..., name: _Optional[str] = ..., variant: _Optional[str] = ..., position: _Optional[int] = ..., result_count: _Optional[int] = ...) -> None: ...

class Target(_message.Message):
    __slots__ = ("type", "id", "attributes")
    class AttributesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TYPE_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    type: str
    id: str
    attributes: _containers.ScalarMap[str, str]
    def __init__(self, type: _Optional[str] = ..., id: _Optional[str] = ..., attributes: _Optional[_Mapping[str, str]] = ...) -> None: ...

class User(_message.Message):
    __slots__ = ("session_id", "anonymous_id", "user_id", "identities")
    class IdentitiesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    ANONYMOUS_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    IDENTITIES_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    anonymous_id: str
    user_id: str
    identities: _containers.ScalarMap[str, str]
    def __init__(self, session_id: _Optional[str] = ..., anonymous_id: _Optional[str] = ..., user_id: _Optional[str] = ..., identities: _Optional[_Mapping[str, str]] = ...) -> None: ...

class Metadata(_message.Message):
    __slots__ = ("locale", "device_type", "quantity", "price", "currency", "order_id", "page_url", "referrer", "user_agent", "query", "custom")
    class CustomEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    LOCALE_FIELD_NUMBER: _ClassVar[int]
    DEVICE_TYPE_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    PRICE_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_URL_FIELD_NUMBER: _ClassVar[int]
    REFERRER_FIELD_NUMBER: _ClassVar[int]
    USER_AGENT_FIELD_NUMBER: _ClassVar[int]
    QUERY_FIELD_NUMBER: _ClassVar[int]
    CUSTOM_FIELD_NUMBER: _ClassVar[int]
    locale: str
    device_type: str
    quantity: int
    price: int
    currency: str
    order_id: str
    page_url: str
    referrer: str
    user_agent: str
    query: str
    custom: _containers.ScalarMap[str, str]
    def __init__(self, locale: _Optional[str] = ..., device_type: _Optional[str] = ..., quantity: _Optional[int] = ..., price: _Optional[int] = ..., currency: _Optional[str] = ..., order_id: _Optional[str] = ..., page_url: _Optional[str] = ..., referrer: _Optional[str] = ..., user_agent: _Optional[str] = ..., query: _Optional[str] = ..., custom: _Optional[_Mapping[str, str]] = ...) -> None: ...

class TrackActivityRequest(_message.Message):
    __slots__ = ("activity", "sent_at")
    ACTIVITY_FIELD_NUMBER: _ClassVar[int]
    SENT_AT_FIELD_NUMBER: _ClassVar[int]
    activity: Activity
    sent_at: _timestamp_pb2.Timestamp
    def __init__(self, activity: _Optional[_Union[Activity, _Mapping]] = ..., sent_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class TrackActivityResponse(_message.Message):
    __slots__ = ("accepted_count", "rejections", "activity_id")
    ACCEPTED_COUNT_FIELD_NUMBER: _ClassVar[int]
    REJECTIONS_FIELD_NUMBER: _ClassVar[int]
    ACTIVITY_ID_FIELD_NUMBER: _ClassVar[int]
    accepted_count: int
    rejections: _containers.RepeatedCompositeFieldContainer[Rejection]
    activity_id: str
    def __init__(self, accepted_count: _Optional[int] = ..., rejections: _Optional[_Iterable[_Union[Rejection, _Mapping]]] = ..., activity_id: _Optional[str] = ...) -> None: ...

class TrackActivitiesRequest(_message.Message):
    __slots__ = ("activities", "sent_at")
    ACTIVITIES_FIELD_NUMBER: _ClassVar[int]
    SENT_AT_FIELD_NUMBER: _ClassVar[int]
    activities: _containers.RepeatedCompositeFieldContainer[Activity]
    sent_at: _timestamp_pb2.Timestamp
    def __init__(self, activities: _Optional[_Iterable[_Union[Activity, _Mapping]]] = ..., sent_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class TrackActivitiesResponse(_message.Message):
    __slots__ = ("accepted_count", "rejections", "assigned_ids")
    class AssignedIdsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: int
        value: str
        def __init__(self, key: _Optional[int] = ..., value: _Optional[str] = ...) -> None: ...
    ACCEPTED_COUNT_FIELD_NUMBER: _ClassVar[int]
    REJECTIONS_FIELD_NUMBER: _ClassVar[int]
    ASSIGNED_IDS_FIELD_NUMBER: _ClassVar[int]
    accepted_count: int
    rejections: _containers.RepeatedCompositeFieldContainer[Rejection]
    assigned_ids: _containers.ScalarMap[int, str]
    def __init__(self, accepted_count: _Optional[int] = ..., rejections: _Optional[_Iterable[_Union[Rejection, _Mapping]]] = ..., assigned_ids: _Optional[_Mapping[int, str]] = ...) -> None: ...

class StreamActivitiesRequest(_message.Message):
    __slots__ = ("sequence", "activities", "sent_at")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    ACTIVITIES_FIELD_NUMBER: _ClassVar[int]
    SENT_AT_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    activities: _containers.RepeatedCompositeFieldContainer[Activity]
    sent_at: _timestamp_pb2.Timestamp
    def __init__(self, sequence: _Optional[int] = ..., activities: _Optional[_Iterable[_Union[Activity, _Mapping]]] = ..., sent_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class StreamActivitiesResponse(_message.Message):
    __slots__ = ("sequence", "accepted_count", "rejections", "assigned_ids", "status")
    class AssignedIdsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: int
        value: str
        def __init__(self, key: _Optional[int] = ..., value: _Optional[str] = ...) -> None: ...
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_COUNT_FIELD_NUMBER: _ClassVar[int]
    REJECTIONS_FIELD_NUMBER: _ClassVar[int]
    ASSIGNED_IDS_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    accepted_count: int
    rejections: _containers.RepeatedCompositeFieldContainer[Rejection]
    assigned_ids: _containers.ScalarMap[int, str]
    status: BatchStatus
    def __init__(self, sequence: _Optional[int] = ..., accepted_count: _Optional[int] = ..., rejections: _Optional[_Iterable[_Union[Rejection, _Mapping]]] = ..., assigned_ids: _Optional[_Mapping[int, str]] = ..., status: _Optional[_Union[BatchStatus, _Mapping]] = ...) -> None: ...

class BatchStatus(_message.Message):
    __slots__ = ("code", "message", "retry_delay")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    RETRY_DELAY_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    retry_delay: _duration_pb2.Duration
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ..., retry_delay: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class Rejection(_message.Message):
    __slots__ = ("index", "activity_id", "reason", "field", "message")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    ACTIVITY_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    FIELD_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    index: int
    activity_id: str
    reason: RejectionReason
    field: str
    message: str
    def __init__(self, index: _Optional[int] = ..., activity_id: _Optional[str] = ..., reason: _Optional[_Union[RejectionReason, str]] = ..., field: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...
