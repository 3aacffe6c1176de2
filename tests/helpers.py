"""Builders shared by the tests."""

from __future__ import annotations

import uuid
from typing import Any

from collector.proto.activity.v1 import activity_pb2 as pb


def make_activity(n: int = 0, **fields: Any) -> pb.Activity:
    """A valid activity with every commonly sent field filled; keyword arguments replace fields."""
    activity = pb.Activity(
        id=str(uuid.uuid4()),
        action="view",
        target=pb.Target(type="product", id=f"sku-{n}", attributes={"color": "red"}),
        user=pb.User(session_id=f"s-{n % 7}", anonymous_id=f"anon-{n % 11}", user_id=f"u-{n % 5}"),
        metadata=pb.Metadata(locale="en-US", device_type="mobile", page_url=f"https://shop.example/p/{n}"),
    )
    for name, value in fields.items():
        if isinstance(value, (pb.Target, pb.User, pb.Metadata)):
            getattr(activity, name).CopyFrom(value)
        elif name == "segments":
            activity.segments[:] = value
        else:
            setattr(activity, name, value)
    return activity


def items(activities: list[pb.Activity], indexes: Any = None) -> list[tuple[int, pb.Activity]]:
    """(index, activity) pairs, as the pipeline takes them; all of them unless `indexes` says which."""
    chosen = range(len(activities)) if indexes is None else indexes
    return [(i, activities[i]) for i in chosen]
