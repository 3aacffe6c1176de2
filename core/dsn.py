"""Connection strings shown to people: every password form masked.

One masker for every DSN the collector prints or logs (ClickHouse, PostgreSQL): a password in the user
part (`postgresql://user:secret@host/db`), in a query parameter (`?password=secret`, `sslpassword`,
...), or in a libpq keyword/value string (`host=db password=secret`, the form `PGPASSWORD` stands for).
"""

from __future__ import annotations

import re
import urllib.parse

_SECRET_PARAMS = frozenset({"password", "passwd", "pwd", "sslpassword"})


def mask_dsn(dsn: str) -> str:
    """`dsn` with every password in it replaced by ***; a string that is not a DSN becomes *** whole."""
    scheme, sep, rest = dsn.partition("://")
    if not sep:
        return _mask_keywords(dsn) if "=" in dsn else "***"
    cut = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
    authority, tail = rest[:cut], rest[cut:]
    if "@" in authority:
        userinfo, _, host = authority.rpartition("@")
        user, colon, _password = userinfo.partition(":")
        authority = f"{user}:***@{host}" if colon else authority
    path, question, query = tail.partition("?")
    if question:
        params = []
        for param in query.split("&"):
            key, eq, _value = param.partition("=")
            secret = eq and urllib.parse.unquote_plus(key).lower() in _SECRET_PARAMS
            params.append(f"{key}=***" if secret else param)
        tail = f"{path}?{'&'.join(params)}"
    return f"{scheme}://{authority}{tail}"


# A libpq keyword/value pair: `key = value`, the value bare or single-quoted with backslash escapes.
_KEYWORD_VALUE = re.compile(r"(?P<key>[A-Za-z_]+)\s*=\s*(?P<value>'(?:[^'\\]|\\.)*'|\S+)")


def _mask_keywords(dsn: str) -> str:
    def mask(match: re.Match[str]) -> str:
        if match.group("key").lower() not in _SECRET_PARAMS:
            return match.group(0)
        return f"{match.group('key')}=***"

    return _KEYWORD_VALUE.sub(mask, dsn)
