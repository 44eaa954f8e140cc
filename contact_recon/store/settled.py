"""People a plan had nothing for, and what it read of them (`settled`): left out of the next plan while it holds.

Planning a night at 100,000 contacts used to read and merge every person although about 1% change a day. A person
is *settled* when an applied plan found nothing to do for them (no op of any status, no conflict, no review) and
its base was then written; the row keeps the digests of what that plan read:

- `ghl_hash`, `te_hash`: the records' `content_hash` (model/normalise.py: every compared column), null where a
  side had no record;
- `tasks_hash`: md5 of the person's task hashes in task id order, and `facts`, the fact tags those tasks gave that
  night (an open task, an overdue one: `today` moves an open task into overdue without any record changing);
- `base_at`: the base row's `updated_at` (a sync between nights, a re-key or a first fill moves it);
- the person's `contact_id` and `email` as the identity matcher keyed them (a new pairing changes them);
- `generation`: a digest of everything else the plan read for everyone (the policy, TinyEmail's list names, the
  home lists, the default region; `stages/plan.py generation`): when it changes nobody is settled.

`unchanged(people, generation, today)` is one SQL query: the settled people whose every digest is what the latest
snapshot holds now (`digests`), with the merge case each one was settled in (the guards' and stats' counts). Those
are left out of tonight's plan; everyone else is in play (`stages/plan.py in_play`). `replace(keys, rows)` runs in
the apply stage's advance transaction: the in-play people's old rows go, the ones tonight's plan settled come in,
their `base_at` read from the base just written.
"""

from __future__ import annotations

from collections.abc import Sequence

import polars as pl

from contact_recon.store.db import Store, batches

DIGESTS = pl.Schema({"key": pl.String(), "contact_id": pl.String(), "email": pl.String(),
                     "location_id": pl.String(), "ghl_hash": pl.String(), "te_hash": pl.String(),
                     "tasks_hash": pl.String(), "facts": pl.String()})
SETTLE = pl.Schema({**DIGESTS, "person_case": pl.String()})  # a row the plan stage saves for the advance
UNCHANGED = pl.Schema({"key": pl.String(), "person_case": pl.String(), "on_ghl": pl.Boolean(),
                       "on_tinyemail": pl.Boolean()})
PEOPLE_BATCH = 100_000  # people per digest query: a night of 100,000 contacts ran as one within 256 MB
_COMPARED = ("contact_id", "email", "ghl_hash", "te_hash", "tasks_hash", "facts")


class Settled:
    """The `settled` table of the store's DuckDB connection (migration 13)."""

    def __init__(self, store: Store):
        self.store = store

    def _digest_sql(self, today: str) -> tuple[str, list[object]]:
        """SQL over the registered `_people` (key, contact_id, email, location_id): DIGESTS per person. Every
        part reads only the rows of `_people` (semi joins) so that its aggregates, which keep their groups in
        memory (string_agg with ORDER BY), hold one batch of people, not the whole snapshot (`_with_people`)."""
        ghl, ghl_params = self.store.latest_sql("ghl_contacts")
        te, te_params = self.store.latest_sql("te_customers")
        tasks, task_params = self.store.latest_sql("ghl_tasks")
        open_ = "NOT coalesce(t.completed, false)"
        sql = f"""
            WITH g AS (SELECT x.contact_id, x.location_id, x.content_hash FROM ({ghl}) x
                       SEMI JOIN _people p ON p.contact_id = x.contact_id AND p.location_id = x.location_id),
            t AS ({tasks}),
            c AS (SELECT x.email, string_agg(x.content_hash, ',' ORDER BY x.content_hash) AS content_hash
                  FROM ({te}) x SEMI JOIN _people p ON p.email = x.email GROUP BY x.email),
            k AS (SELECT t.contact_id, t.location_id,
                         md5(string_agg(t.content_hash, ',' ORDER BY t.task_id)) AS tasks_hash,
                         concat_ws(',', CASE WHEN bool_or({open_}) THEN 'open' END,
                                   CASE WHEN bool_or({open_} AND substr(t.due_date, 1, 10) < ?) THEN 'overdue' END)
                             AS facts
                  FROM t JOIN _people p ON p.contact_id = t.contact_id AND p.location_id = t.location_id
                  GROUP BY ALL)
            SELECT p.key, p.contact_id, p.email, p.location_id, g.content_hash AS ghl_hash, c.content_hash AS te_hash,
                   k.tasks_hash, coalesce(k.facts, '') AS facts
            FROM _people p
            LEFT JOIN g ON g.contact_id = p.contact_id AND g.location_id = p.location_id
            LEFT JOIN c ON c.email = p.email
            LEFT JOIN k ON k.contact_id = p.contact_id AND k.location_id = p.location_id"""
        return sql, [*ghl_params, *task_params, *te_params, today]

    def digests(self, people: pl.DataFrame, today: str) -> pl.DataFrame:
        """DIGESTS of `people` (key, contact_id, email, location_id) as the latest snapshot holds them, on `today`,
        in key order."""
        sql, params = self._digest_sql(today)
        return self._with_people(people, f"SELECT * FROM ({sql}) ORDER BY key", params, DIGESTS)

    def unchanged(self, people: pl.DataFrame, generation: str, today: str) -> pl.DataFrame:
        """UNCHANGED: those of `people` settled in this `generation` whose every digest and base row is as then,
        in key order."""
        sql, params = self._digest_sql(today)
        same = " AND ".join(f"s.{name} IS NOT DISTINCT FROM d.{name}" for name in _COMPARED)
        query = (f"SELECT s.key, s.person_case, d.ghl_hash IS NOT NULL AS on_ghl, "
                 f"d.te_hash IS NOT NULL AS on_tinyemail FROM ({sql}) d JOIN settled s ON s.key = d.key "
                 f"LEFT JOIN base b ON b.key = d.key "
                 f"WHERE s.generation = ? AND {same} AND s.base_at IS NOT DISTINCT FROM b.updated_at ORDER BY s.key")
        return self._with_people(people, query, [*params, generation], UNCHANGED)

    def replace(self, keys: Sequence[str], rows: pl.DataFrame, generation: str, run_id: str) -> int:
        """Forget the settled rows of `keys` (the people a plan had in play), then settle `rows` (SETTLE) with
        their base rows' `updated_at`; inside the caller's transaction. How many were settled."""
        store = self.store
        for part in batches(pl.DataFrame({"key": list(keys)}, schema={"key": pl.String()})):
            store._insert("DELETE FROM settled WHERE key IN (SELECT key FROM _frame)", part)
        if rows.height == 0:
            return 0
        params = [generation, run_id, store.clock()]  # one settled_at for every slice
        for part in batches(rows.select(list(SETTLE)).cast(SETTLE)):
            store._insert("INSERT OR REPLACE INTO settled BY NAME SELECT f.*, b.updated_at AS base_at, "
                          "?::VARCHAR AS generation, ?::VARCHAR AS run_id, ?::TIMESTAMPTZ AS settled_at "
                          "FROM _frame f LEFT JOIN base b ON b.key = f.key", part, params)
        return rows.height

    def count(self) -> int:
        return int(self.store.con.execute("SELECT count(*) FROM settled").fetchall()[0][0])

    def _with_people(self, people: pl.DataFrame, sql: str, params: list[object], schema: pl.Schema) -> pl.DataFrame:
        """`sql` over `people` registered as `_people`, PEOPLE_BATCH people at a time in key order, so a query
        ordered by key gives the rows of everyone in key order. One query over a million people (a first night,
        or a night after a generation change) ran out of the store's memory limit in its ordered aggregates."""
        people = people.select("key", "contact_id", "email", "location_id").sort("key")
        parts = []
        for part in batches(people, PEOPLE_BATCH):
            self.store.con.register("_people", part)
            try:
                parts.append(self.store._frame(sql, params).cast(schema))
            finally:
                self.store.con.unregister("_people")
        return pl.concat(parts) if len(parts) > 1 else parts[0]


__all__ = ["DIGESTS", "SETTLE", "UNCHANGED", "Settled"]
