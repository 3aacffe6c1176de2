"""A month of a shop's activities, generated inside ClickHouse: `INSERT ... SELECT ... FROM numbers()`.

Every column is a deterministic function of the row number (hashes of it), so that a size always
gives the same shop and the benchmark's figures can be compared between runs and versions. The shape
follows what a shop with search and recommendations sends:

- visits of 20 activities, each by one of `people` persons (3 % of them bots, flagged `is_bot` as
  enrichment flags crawlers), at a time spread over the month; a person is logged in on 40 % of visits
  (`user_id`, `resolved_user_id`), anonymous otherwise (`anonymous_id`);
- per visit, three responses (`source_id`), each of a source type, name and A/B variant;
- actions: impressions (one per item shown, at its position), views, clicks (on a position), searches
  (a query out of 2,000, 8 % without results), add-to-carts and purchases (priced, mostly EUR) of the
  visit's few products, so that clicks and purchases meet on the same targets;
- a share of the activities sent again later with the same ids (`resend_share`): a client's retries.
"""

from __future__ import annotations

import datetime as dt

FIRST_DAY = dt.date(2026, 11, 1)
DAYS = 30
PEOPLE = 200_000
VISIT = 20
"""Activities per visit."""
TENANT = "shop"

_SOURCE_TYPES = "['search', 'recommendation', 'recommendation', 'merchandising']"
_SOURCE_NAMES = (
    "['site-search', 'pdp-similar', 'home-trending', 'cart-upsell', 'category-top', 'pdp-bought-together',"
    " 'email-picks', 'home-for-you']"
)
# One action per activity, by a draw out of 1000.
_ACTION = (
    "multiIf(d < 550, 'impression', d < 700, 'view', d < 800, 'click', d < 850, 'search', "
    "d < 900, 'add_to_cart', d < 915, 'purchase', d < 960, 'page_view', 'remove_from_cart')"
)


def _h(salt: int, of: str = "n") -> str:
    return f"cityHash64({of}, {salt})"


def generate_sql(database: str, first_row: int, rows: int, resend: bool = False) -> str:
    """Rows `first_row` to `first_row + rows - 1` of the shop, as one INSERT ... SELECT. With `resend`,
    the same rows again, received a day later (copies of the same activities)."""
    start = f"toDateTime64('{FIRST_DAY.isoformat()} 00:00:00', 3, 'UTC')"
    received = f"addSeconds({start}, {DAYS * 86400 + (86400 if resend else 0)})"
    return f"""INSERT INTO `{database}`.activities (
  tenant_id, id, action, target_type, target_id, session_id, anonymous_id, user_id, source_id,
  source_type, source_name, source_variant, source_position, source_result_count, device_type,
  quantity, price, currency, order_id, is_bot, query, resolved_user_id, segments, received_at,
  occurred_at, client_occurred_at)
SELECT
  '{TENANT}' AS tenant_id,
  reinterpretAsUUID(concat(reinterpretAsFixedString({_h(1)}), reinterpretAsFixedString({_h(2)}))) AS id,
  {_ACTION} AS action,
  multiIf(action = 'search', 'search', action = 'page_view', 'page', 'product') AS target_type,
  multiIf(
    action = 'search', query,
    action = 'page_view', concat('page-', toString({_h(3, "visit")} % 50)),
    -- A visit looks at a handful of products, skewed towards the popular ones.
    concat('sku-', toString(intDiv(({_h(4, "visit, n % 5")} % 3000) * ({_h(5, "visit, n % 5")} % 3000), 180)))
  ) AS target_id,
  concat('s-', toString(visit)) AS session_id,
  concat('a-', toString(person)) AS anonymous_id,
  if(logged_in, concat('u-', toString(person)), '') AS user_id,
  if(action IN ('impression', 'click', 'search', 'view') AND (action != 'view' OR d % 2 = 0),
     concat('r-', toString(visit), '-', toString(response)), '') AS source_id,
  if(source_id = '', '', if(action = 'search', 'search', {_SOURCE_TYPES}[1 + {_h(6, "visit, response")} % 4]))
    AS source_type,
  if(source_id = '', '', if(source_type = 'search', 'site-search',
     {_SOURCE_NAMES}[1 + {_h(7, "visit, response")} % 8])) AS source_name,
  if(source_id = '', '', ['A', 'B', ''][1 + {_h(8, "person")} % 3]) AS source_variant,
  toUInt32(if(action IN ('impression', 'click'), 1 + ({_h(9)} % 20) * ({_h(10)} % 20) % 20, 0))
    AS source_position,
  if(action = 'search', toNullable(toUInt32(if({_h(11)} % 100 < 8, 0, 1 + {_h(12)} % 200))), NULL)
    AS source_result_count,
  if(is_bot, 'bot', ['desktop', 'mobile', 'mobile', 'tablet'][1 + {_h(13, "visit")} % 4]) AS device_type,
  if(action IN ('add_to_cart', 'purchase'), toNullable(toInt64(1 + {_h(14)} % 3)), NULL) AS quantity,
  if(action IN ('add_to_cart', 'purchase'), toNullable(toInt64(199 + {_h(15, "target_id")} % 20000)), NULL)
    AS price,
  if(price IS NULL, '', if({_h(16, "person")} % 10 = 0, 'USD', 'EUR')) AS currency,
  if(action = 'purchase', concat('o-', toString(visit)), '') AS order_id,
  person % 33 = 0 AS is_bot,
  if(action = 'search', concat('query ', toString(({_h(17)} % 2000) * ({_h(18)} % 2000) % 2000)), '')
    AS query,
  user_id AS resolved_user_id,
  if(person % 4 = 0, ['vip'], []) AS segments,
  {received} AS received_at,
  addMilliseconds(visit_start, (n % {VISIT}) * 20000 + {_h(19)} % 15000) AS occurred_at,
  occurred_at AS client_occurred_at
FROM (
  SELECT number AS n,
    intDiv(number, {VISIT}) AS visit,
    {_h(20, "visit")} % {PEOPLE} AS person,
    {_h(21, "visit")} % 10 < 4 AS logged_in,
    intDiv(number % {VISIT}, 7) AS response,
    {_h(22)} % 1000 AS d,
    addMilliseconds({start}, ({_h(23, "visit")} % {(DAYS * 86400 - 3600) * 1000})) AS visit_start
  FROM numbers({first_row}, {rows})
)"""


def resend_sql(database: str, rows: int, share_per_mille: int) -> str:
    """Copies of about `share_per_mille` / 1000 of the first `rows` activities, a client's retries."""
    return (
        generate_sql(database, 0, rows, resend=True) + f"\nWHERE cityHash64(n, 99) % 1000 < {share_per_mille}"
    )
