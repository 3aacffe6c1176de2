"""core.dsn.mask_dsn: every password form is masked, nothing else changes."""

from __future__ import annotations

import pytest

from core.dsn import mask_dsn


@pytest.mark.parametrize(
    ("dsn", "shown"),
    [
        ("postgresql://u:pw@db:5432/x?sslmode=require", "postgresql://u:***@db:5432/x?sslmode=require"),
        ("postgresql://u@db/x", "postgresql://u@db/x"),
        (
            "postgresql://u@db/x?password=s3cret&sslmode=require",
            "postgresql://u@db/x?password=***&sslmode=require",
        ),
        ("postgresql://u@db/x?sslpassword=s3cret", "postgresql://u@db/x?sslpassword=***"),
        ("postgresql://u@db/x?PassWord=s3cret", "postgresql://u@db/x?PassWord=***"),
        ("http://default:pw@clickhouse:8123/activity", "http://default:***@clickhouse:8123/activity"),
        ("chdb:///var/lib/activity/clickhouse", "chdb:///var/lib/activity/clickhouse"),
        ("host=db port=5432 password=s3cret user=u", "host=db port=5432 password=*** user=u"),
        ("host=db password = 's3 \\' cret' dbname=x", "host=db password=*** dbname=x"),
        ("not a dsn", "***"),
    ],
)
def test_every_password_form_is_masked_and_the_rest_kept(dsn: str, shown: str) -> None:
    assert mask_dsn(dsn) == shown
    assert "s3cret" not in mask_dsn(dsn)
