import datetime

from activity.v1 import activity_pb2 as _activity_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GetProfileRequest(_message.Message):
    __slots__ = ("user", "recent_limit")
    USER_FIELD_NUMBER: _ClassVar[int]
    RECENT_LIMIT_FIELD_NUMBER: _ClassVar[int]
    user: _activity_pb2.User
    recent_limit: int
    def __init__(self, user: _Optional[_Union[_activity_pb2.User, _Mapping]] = ..., recent_limit: _Optional[int] = ...) -> None: ...

class GetProfileResponse(_message.Message):
    __slots__ = ("profile",)
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    profile: Profile
    def __init__(self, profile: _Optional[_Union[Profile, _Mapping]] = ...) -> None: ...

class Profile(_message.Message):
    __slots__ = ("person_id", "first_seen", "last_seen", "recent", "counts", "revenue", "affinities", "segments")
    class CountsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class RevenueEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    PERSON_ID_FIELD_NUMBER: _ClassVar[int]
    FIRST_SEEN_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_FIELD_NUMBER: _ClassVar[int]
    RECENT_FIELD_NUMBER: _ClassVar[int]
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    REVENUE_FIELD_NUMBER: _ClassVar[int]
    AFFINITIES_FIELD_NUMBER: _ClassVar[int]
    SEGMENTS_FIELD_NUMBER: _ClassVar[int]
    person_id: str
    first_seen: _timestamp_pb2.Timestamp
    last_seen: _timestamp_pb2.Timestamp
    recent: _containers.RepeatedCompositeFieldContainer[ProfileActivity]
    counts: _containers.ScalarMap[str, int]
    revenue: _containers.ScalarMap[str, int]
    affinities: _containers.RepeatedCompositeFieldContainer[Affinity]
    segments: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, person_id: _Optional[str] = ..., first_seen: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_seen: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., recent: _Optional[_Iterable[_Union[ProfileActivity, _Mapping]]] = ..., counts: _Optional[_Mapping[str, int]] = ..., revenue: _Optional[_Mapping[str, int]] = ..., affinities: _Optional[_Iterable[_Union[Affinity, _Mapping]]] = ..., segments: _Optional[_Iterable[str]] = ...) -> None: ...

class ProfileActivity(_message.Message):
    __slots__ = ("id", "action", "target", "source_id", "occurred_at")
    ID_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    SOURCE_ID_FIELD_NUMBER: _ClassVar[int]
    OCCURRED_AT_FIELD_NUMBER: _ClassVar[int]
    id: str
    action: str
    target: _activity_pb2.Target
    source_id: str
    occurred_at: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., action: _Optional[str] = ..., target: _Optional[_Union[_activity_pb2.Target, _Mapping]] = ..., source_id: _Optional[str] = ..., occurred_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class Affinity(_message.Message):
    __slots__ = ("kind", "value", "score")
    KIND_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    kind: str
    value: str
    score: float
    def __init__(self, kind: _Optional[str] = ..., value: _Optional[str] = ..., score: _Optional[float] = ...) -> None: ...

class GetRecommendationsRequest(_message.Message):
    __slots__ = ("user", "target", "strategy", "limit", "exclude_target_ids")
    USER_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_TARGET_IDS_FIELD_NUMBER: _ClassVar[int]
    user: _activity_pb2.User
    target: _activity_pb2.Target
    strategy: str
    limit: int
    exclude_target_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, user: _Optional[_Union[_activity_pb2.User, _Mapping]] = ..., target: _Optional[_Union[_activity_pb2.Target, _Mapping]] = ..., strategy: _Optional[str] = ..., limit: _Optional[int] = ..., exclude_target_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class GetRecommendationsResponse(_message.Message):
    __slots__ = ("source_id", "strategy", "items")
    SOURCE_ID_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    source_id: str
    strategy: str
    items: _containers.RepeatedCompositeFieldContainer[Recommendation]
    def __init__(self, source_id: _Optional[str] = ..., strategy: _Optional[str] = ..., items: _Optional[_Iterable[_Union[Recommendation, _Mapping]]] = ...) -> None: ...

class Recommendation(_message.Message):
    __slots__ = ("target", "score", "position")
    TARGET_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    target: _activity_pb2.Target
    score: float
    position: int
    def __init__(self, target: _Optional[_Union[_activity_pb2.Target, _Mapping]] = ..., score: _Optional[float] = ..., position: _Optional[int] = ...) -> None: ...
