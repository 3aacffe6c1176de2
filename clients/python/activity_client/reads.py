"""The read calls: `Reader` asks a collector's `ProfileService` for profiles and recommendations.

    from activity_client import Reader

    with Reader("127.0.0.1:50051", api_key="ak_...") as reader:  # a key of scope read
        profile = reader.get_profile(user_id="u-1")
        answer = reader.get_recommendations("also_bought", target=("product", "sku-1"), user_id="u-1")
        for item in answer.items:
            ...  # show item.target; send activities with answer.source_id and item.position

Unlike `Client`, which buffers and sends activities in the background, each call here is one request,
answered or failed (`grpc.RpcError`) before it returns: a page waits for its recommendations.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from types import TracebackType
from typing import Any

import grpc

from activity_client.proto.activity.v1 import activity_pb2 as pb
from activity_client.proto.activity.v1 import profile_pb2 as ppb
from activity_client.proto.activity.v1 import profile_pb2_grpc as ppb_grpc

__all__ = ["Reader"]


def _user(user_id: str, anonymous_id: str, session_id: str) -> pb.User:
    return pb.User(user_id=user_id, anonymous_id=anonymous_id, session_id=session_id)


class Reader:
    def __init__(
        self,
        target: str = "127.0.0.1:50051",
        *,
        api_key: str | None = None,
        timeout: float = 1.0,
        credentials: grpc.ChannelCredentials | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        channel_options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        """Connect to the collector at `target` (HOST:PORT). api_key: a key of scope read (None: the
        environment variable ACTIVITY_API_KEY, if set). timeout: longest wait for an answer, in
        seconds. credentials: TLS credentials; None: plain text."""
        key = api_key if api_key is not None else os.environ.get("ACTIVITY_API_KEY")
        self._metadata = tuple(metadata) + ((("authorization", f"Bearer {key}"),) if key else ())
        self._timeout = timeout
        if credentials is None:
            self._channel = grpc.insecure_channel(target, options=list(channel_options))
        else:
            self._channel = grpc.secure_channel(target, credentials, options=list(channel_options))
        self._stub = ppb_grpc.ProfileServiceStub(self._channel)  # type: ignore[no-untyped-call]

    def get_profile(
        self, *, user_id: str = "", anonymous_id: str = "", session_id: str = "", recent_limit: int = 0
    ) -> ppb.Profile:
        """The profile of the person any of these ids names (an empty one for an unknown person)."""
        request = ppb.GetProfileRequest(
            user=_user(user_id, anonymous_id, session_id), recent_limit=recent_limit
        )
        answer: ppb.GetProfileResponse = self._stub.GetProfile(
            request, timeout=self._timeout, metadata=self._metadata
        )
        return answer.profile

    def get_recommendations(
        self,
        strategy: str,
        *,
        target: tuple[str, str] | None = None,
        user_id: str = "",
        anonymous_id: str = "",
        session_id: str = "",
        limit: int = 0,
        exclude_target_ids: Sequence[str] = (),
    ) -> ppb.GetRecommendationsResponse:
        """What `strategy` recommends; `target` is (type, id) of the target being viewed."""
        request = ppb.GetRecommendationsRequest(
            strategy=strategy,
            user=_user(user_id, anonymous_id, session_id),
            limit=limit,
            exclude_target_ids=list(exclude_target_ids),
        )
        if target is not None:
            request.target.type, request.target.id = target
        answer: ppb.GetRecommendationsResponse = self._stub.GetRecommendations(
            request, timeout=self._timeout, metadata=self._metadata
        )
        return answer

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Reader:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()
