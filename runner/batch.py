"""Batched data files (``-- runner: batch``): one data statement, applied over key ranges in short transactions.

Invariants:
- The enumerated table (``discover.BatchTarget``) is resolved as the statement resolves it (the
  clean session, the migration's role), then described by OID on the runner's own connection:
  its primary key (none: exit 3) and the key's btree comparison operators. What the parse tree
  could not tell is refused there too (exit 3): an UPDATE of a key column, an INSERT into the
  table it reads, a function of INSERT ... SELECT that the catalog calls an aggregate.
- Batches partition the key space: a batch covers the keys in ``(after, upper]``, the next one
  starts after ``upper``, the last one has no upper bound. ``upper`` is the size-th key after
  ``after`` in the primary key's order (an index scan on the runner's connection). Each row is
  in exactly one batch; a row inserted behind the position later is not visited.
- What runs is what was validated: the range predicate is added to the statement's WHERE clause
  in pglast's parse tree and deparsed; the text is parsed again and must give exactly the
  validated tree plus the predicate, or nothing runs. The range values are query parameters.
- Each batch is one transaction on the work connection: the clean-session reset, the file's
  timeouts and role, the statement, then, as the session user with ``search_path = pg_catalog,
  pg_temp``, its progress (``history.record_batch``, only over the progress it started from)
  and, with the last batch, the history's success row. A killed run resumes right after its
  last committed batch: no committed batch is done again, no row is skipped.
- A batch that hits ``lock_timeout`` (55P03) rolls back and is retried with backoff, up to the
  runner's retries; any other error fails the migration, its committed batches staying.
- ``Throttle`` decides sizes and pauses, ``Blocking`` measures how long other sessions waited
  for a batch, replicas' lag holds the next batch back; every decision is logged:
  ``batch_committed`` (debug), ``batch_throttled``, and ``batch_progress`` every few seconds.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import psycopg
from psycopg import errors as pgerrors
from psycopg import sql

from runner import execute, history
from runner.discover import Analysis, BatchOptions, BatchTarget, Migration, Statement
from runner.errors import DatabaseUnavailable, DdlLockTimeout, Interrupted, MigrationFailed, Problem, ValidationError
from runner.observe import logger
from runner.retry import Retry
from runner.retry import sleep as retry_sleep

Conn = psycopg.Connection[tuple[Any, ...]]
GROWTH = (0.5, 2.0)  # bounds of the factor from one batch size to the next
SPAN = 10  # sizes stay within batch-size / SPAN .. batch-size * SPAN
SAMPLES = 10  # blocking samples per target batch time, 10-50 ms apart
KEY_OPERATORS = {2: "<=", 5: ">"}  # the btree strategies the ranges use, and their usual names
TABLE_SQL = """SELECT n.nspname, c.relname, c.reltuples::pg_catalog.int8,
    array(SELECT a.attname::pg_catalog.text
          FROM pg_catalog.unnest(i.indkey::pg_catalog.int2[]) WITH ORDINALITY AS k(attnum, ord)
          JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum ORDER BY k.ord)
FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_catalog.pg_index i ON i.indrelid = c.oid AND i.indisprimary
WHERE c.oid = %s"""
OPERATORS_SQL = """SELECT am.amopstrategy, s.nspname::pg_catalog.text, o.oprname::pg_catalog.text
FROM pg_catalog.pg_index i, pg_catalog.unnest(i.indclass::pg_catalog.oid[]) AS k(opclass)
JOIN pg_catalog.pg_opclass oc ON oc.oid = k.opclass
JOIN pg_catalog.pg_amop am ON am.amopfamily = oc.opcfamily AND am.amoplefttype = oc.opcintype
    AND am.amoprighttype = oc.opcintype AND am.amopstrategy IN (2, 5)
JOIN pg_catalog.pg_operator o ON o.oid = am.amopopr JOIN pg_catalog.pg_namespace s ON s.oid = o.oprnamespace
WHERE i.indrelid = %s AND i.indisprimary"""
AGGREGATES_SQL = """SELECT DISTINCT proname::pg_catalog.text FROM pg_catalog.pg_proc
WHERE proname = ANY (%s::pg_catalog.name[]) AND prokind IN ('a', 'w') ORDER BY 1"""
BLOCKED_SQL = """SELECT pg_catalog.count(*) FROM pg_catalog.pg_stat_activity a
WHERE a.wait_event_type = 'Lock' AND %s = ANY (pg_catalog.pg_blocking_pids(a.pid))"""
REPLICA_LAG_SQL = """SELECT pg_catalog.max(pg_catalog.date_part('epoch', replay_lag))::pg_catalog.float8
FROM pg_catalog.pg_stat_replication"""
CAN_READ_LAG_SQL = "SELECT pg_catalog.pg_has_role('pg_read_all_stats', 'USAGE')"


class Watcher(Protocol):
    """What watches the migration in flight (``migrate.Monitor``): progress reports, blockers."""

    every: float  # seconds between progress reports
    interval: float  # seconds between ``tick`` calls while a message runs
    blockers: list[dict[str, object]]  # who blocked the work connection lately

    def tick(self, attempt: execute.Attempt) -> None: ...

    def publish_batch(self, rows_done: float, rate: float, remaining_s: float | None) -> None: ...


class Quiet:
    """The watcher of a scratch database (``verify``, ``rehearse``): no one to report to."""

    every = math.inf
    interval = 1.0

    def __init__(self) -> None:
        self.blockers: list[dict[str, object]] = []

    def tick(self, attempt: execute.Attempt) -> None:
        """Nothing to watch."""

    def publish_batch(self, rows_done: float, rate: float, remaining_s: float | None) -> None:
        """Nothing to publish."""


@dataclass(frozen=True)
class Key:
    """The enumerated table and its primary key, resolved once per run."""

    table: sql.Identifier  # schema-qualified
    name: str  # schema.table, for people
    columns: tuple[str, ...]
    operators: str  # the schema of the key's btree operators (``OPERATOR(schema.>)``)
    estimate: int | None  # pg_class.reltuples; None when the table was never analysed


@dataclass
class State:
    """Where the file stands: committed batches, and the key after which the next one starts."""

    after: tuple[str, ...] | None
    batches: int  # committed batches: the version of the progress row
    rows_done: int  # rows of the table the committed batches covered
    rows_changed: int  # rows the statement changed

    @classmethod
    def of(cls, migration: Migration, statement: Statement, progress: history.BatchProgress | None) -> State:
        """Resume ``progress``; refuse it if the file changed since (exit 3).

        A finished progress row of a pending file (``verify``'s second pass, a history row
        deleted by hand) starts the file over from its first key, the row's version going on.
        """
        if progress is None:
            return cls(None, 0, 0, 0)
        if progress.finished:
            return cls(None, progress.batches, 0, 0)
        if progress.checksum != migration.checksum:
            raise refusal(
                migration,
                statement,
                f"the file changed after {progress.batches} of its batches committed ({progress.rows_done:,} rows, "
                f"up to key {progress.resume_after}): the rest of the table would get another statement; restore "
                "the file, or delete its row from the batch progress table to start over",
            )
        return cls(progress.resume_after, progress.batches, progress.rows_done, progress.rows_changed)


@dataclass
class Throttle:
    """Batch sizes and pauses.

    With ``time`` the next size is ``size * time / duration``, the factor bounded by ``GROWTH``;
    without it the size is ``options.size`` (after a back-off it grows back by the same bound).
    Sizes stay between a ``SPAN``-th and ``SPAN`` times ``options.size``. A batch during which
    other sessions waited for its locks longer than ``max_blocking`` of its time halves the next
    size, and the pause before it is at least as long as the batch took.
    """

    options: BatchOptions
    size: int = 0
    low: int = 0
    high: int = 0

    def __post_init__(self) -> None:
        self.size = self.options.size
        self.low = max(1, self.options.size // SPAN)
        self.high = self.options.size * SPAN

    def after(self, duration: float, blocked: float | None) -> tuple[int, float, bool]:
        """(next size, pause in seconds, whether it backed off for blocking) after a batch."""
        options = self.options
        if options.max_blocking is not None and blocked is not None and blocked > options.max_blocking:
            self.size = max(self.low, self.size // 2)
            return self.size, max(options.pause, duration), True
        low, high = GROWTH
        wanted = min(float(options.size), self.size * high)
        if options.time is not None:
            wanted = self.size * min(high, max(low, options.time / max(duration, 1e-3)))
        self.size = min(self.high, max(self.low, round(wanted)))
        return self.size, options.pause, False


@dataclass
class Blocking:
    """How long other sessions waited for the batch in flight, sampled on the runner's connection.

    The share is the fraction of samples in which at least one session waited for a lock the
    work backend holds (``pg_blocking_pids``): the part of the batch's time the application
    was held up by it, whatever the number of its sessions.
    """

    conn: Conn
    pid: int
    samples: int = 0
    blocked: int = 0

    def sample(self) -> None:
        row = self.conn.execute(BLOCKED_SQL, [self.pid]).fetchone()
        self.samples += 1
        self.blocked += bool(row and row[0])

    def share(self) -> float | None:
        """The share of the batch just done (None: no sample taken); the next batch starts afresh."""
        share = self.blocked / self.samples if self.samples else None
        self.samples = self.blocked = 0
        return share


@dataclass
class Ranged:
    """The file's statement with a key range added to its WHERE clause, deparsed and checked.

    One text per shape (a lower bound or not, an upper bound or not); ``$1..$n`` are the lower
    key's values, then the upper key's.
    """

    migration: Migration
    statement: Statement
    target: BatchTarget
    key: Key
    texts: dict[tuple[bool, bool], str] = field(default_factory=dict)

    def text(self, *, lower: bool, upper: bool) -> str:
        if (lower, upper) not in self.texts:
            self.texts[lower, upper] = self._build(lower=lower, upper=upper)
        return self.texts[lower, upper]

    def _build(self, *, lower: bool, upper: bool) -> str:
        from pglast import ast, enums, parse_sql  # noqa: PLC0415 - pglast's node objects, for batch files only
        from pglast.stream import RawStream  # noqa: PLC0415

        implicit, conjunction = enums.CoercionForm.COERCE_IMPLICIT_CAST, enums.BoolExprType.AND_EXPR
        qualifier = ast.String(sval=self.target.qualifier)

        def side(nodes: list[Any]) -> Any:
            return nodes[0] if len(nodes) == 1 else ast.RowExpr(args=tuple(nodes), row_format=implicit)

        def compare(operator: str, first: int) -> Any:
            return ast.A_Expr(
                kind=enums.A_Expr_Kind.AEXPR_OP,
                name=(ast.String(sval=self.key.operators), ast.String(sval=operator)),
                lexpr=side([ast.ColumnRef(fields=(qualifier, ast.String(sval=c))) for c in self.key.columns]),
                rexpr=side([ast.ParamRef(number=first + i) for i in range(len(self.key.columns))]),
            )

        terms = [compare(">", 1)] if lower else []
        terms += [compare("<=", 1 + len(terms) * len(self.key.columns))] if upper else []
        (raw,) = parse_sql(self.statement.text)
        expected: Any = raw.stmt
        holder = expected.selectStmt if self.target.kind == "insert" else expected
        where = holder.whereClause
        if where is not None:  # as the parser builds it: a left-hand AND takes the next term in
            nested = isinstance(where, ast.BoolExpr) and where.boolop == conjunction
            terms = [*(where.args if nested else (where,)), *terms]
        if terms:
            holder.whereClause = terms[0] if len(terms) == 1 else ast.BoolExpr(boolop=conjunction, args=tuple(terms))
        text = str(RawStream()(expected))
        check(self.migration, self.statement, expected, text)
        return text


def check(migration: Migration, statement: Statement, expected: Any, text: str) -> None:
    """Refuse (exit 3) unless ``text`` parses to exactly the tree ``expected``."""
    from pglast import parse_sql  # noqa: PLC0415

    parsed = parse_sql(text)
    if len(parsed) != 1 or parsed[0].stmt != expected:
        raise refusal(
            migration,
            statement,
            "the statement with its key range, as deparsed, does not parse back to the validated statement "
            "plus the range; the runner does not run it",
        )


@contextmanager
def watching(migration: Migration, what: str) -> Iterator[None]:
    """The runner's own statements for a batch file: a lock timeout is worth a retry, other errors are exit 5."""
    try:
        yield
    except pgerrors.LockNotAvailable as exc:
        raise DdlLockTimeout(
            migration.name, f"{what} waited longer than lock_timeout: {exc}", sqlstate="55P03", line=None
        ) from None
    except psycopg.Error as exc:
        raise DatabaseUnavailable(f"{migration.name}: {what}: {exc}") from None


def refusal(migration: Migration, statement: Statement, message: str) -> ValidationError:
    """A batch file the runner will not run (exit 3), naming file and line."""
    return ValidationError([Problem("batch", f"batch file: {message}", migration.name, statement.line)])


def resolve(
    conn: Conn, watch: Conn, migration: Migration, statement: Statement, target: BatchTarget, opening: list[str]
) -> Key:
    """The enumerated table's ``Key``; ``ValidationError`` (exit 3) when the runner cannot enumerate its rows.

    Names are resolved on the work connection in the migration's own session state
    (``opening``: the reset, its timeouts and role), as the statement resolves them; everything
    else by OID on the runner's connection ``watch``.
    """
    names = [sql.Identifier(*target.table).as_string(conn), sql.Identifier(*target.written).as_string(conn)]
    with watching(migration, f"resolving {'.'.join(target.table)}"):
        try:
            conn.execute(";\n".join(opening))
            row = conn.execute(
                "SELECT pg_catalog.to_regclass(%s)::pg_catalog.oid, pg_catalog.to_regclass(%s)::pg_catalog.oid", names
            ).fetchone()
        finally:
            execute.rollback(conn)
        assert row is not None
        if row[0] is None:
            raise MigrationFailed(
                migration.name, f"relation {names[0]} does not exist", sqlstate="42P01", line=statement.line
            )
        found = watch.execute(TABLE_SQL, [row[0]]).fetchone()
        operators = {(int(s), str(n), str(o)) for s, n, o in watch.execute(OPERATORS_SQL, [row[0]]).fetchall()}
        aggregates = [str(name) for (name,) in watch.execute(AGGREGATES_SQL, [list(target.functions)]).fetchall()]
    assert found is not None
    schema, name, estimate, columns = found
    table = f"{schema}.{name}"

    def refuse(message: str) -> ValidationError:
        return refusal(migration, statement, f"cannot enumerate the rows of {table}: {message}")

    if not columns:
        raise refuse("no primary key")
    if target.kind == "insert" and row[1] == row[0]:
        raise refuse("the INSERT writes the table it reads, so later batches would read rows earlier ones inserted")
    moved = sorted(set(target.assigned) & set(columns))
    if moved:
        raise refuse(
            f"the UPDATE sets key column {', '.join(moved)}: a row could move into a later range and be done twice"
        )
    if aggregates:
        raise refuse(f"{', '.join(aggregates)} aggregates over rows here, which batches of key ranges would split")
    schemas = {schema for _strategy, schema, _name in operators}
    if len(schemas) != 1 or any(KEY_OPERATORS[strategy] != name for strategy, _schema, name in operators):
        raise refuse(f"the key's comparison operators are not <= and > of one schema ({sorted(operators)})")
    return Key(sql.Identifier(schema, name), table, tuple(columns), schemas.pop(), estimate if estimate > 0 else None)


@dataclass
class Batches:
    """One run over a batched data file: the batches from where it stands to the table's end."""

    conn: Conn
    watch: Conn
    migration: Migration
    statement: Statement
    table: history.Table
    session: execute.Session
    opening: list[str]
    attempt: execute.Attempt
    watcher: Watcher
    retries: int
    key: Key
    ranged: Ranged
    state: State
    throttle: Throttle
    blocking: Blocking | None
    tick_s: float
    started: float = field(default_factory=time.monotonic)
    covered: int = 0  # rows this run covered
    ticked: float = 0.0
    reported: float = 0.0

    @property
    def fields(self) -> dict[str, object]:
        return {"migration": self.migration.name, "version": self.migration.label}

    def run(self) -> None:
        """Every batch, pauses and holds between them, until the last one committed."""
        options = self.throttle.options
        logger().info(
            "batch_started",
            **self.fields,
            table=self.key.name,
            key=list(self.key.columns),
            resume_after=list(self.state.after) if self.state.after else None,
            batches=self.state.batches,
            rows_done=self.state.rows_done,
            rows_estimate=self.key.estimate,
            batch_size=options.size,
        )
        self.reported = time.monotonic()
        while True:
            self.hold_for_replicas()
            last, duration = self.one()
            blocked = self.blocking.share() if self.blocking else None
            size, pause, backed_off = self.throttle.after(duration, blocked)
            logger().debug(
                "batch_committed",
                **self.fields,
                batch=self.state.batches,
                duration_ms=round(duration * 1000, 1),
                rows_done=self.state.rows_done,
                rows_changed=self.state.rows_changed,
                blocked=None if blocked is None else round(blocked, 3),
                resume_after=list(self.state.after) if self.state.after else None,
                next_size=None if last else size,
                pause_ms=None if last else round(pause * 1000, 1),
            )
            if backed_off and not last:
                logger().warning(
                    "batch_throttled",
                    **self.fields,
                    batch=self.state.batches,
                    reason="blocking",
                    blocked=round(blocked or 0.0, 3),
                    ceiling=options.max_blocking,
                    next_size=size,
                    pause_ms=round(pause * 1000, 1),
                )
            self.report(final=last)
            if last:
                return
            retry_sleep(pause)

    def one(self) -> tuple[bool, float]:
        """One batch, retried after a lock timeout; (whether it was the last, its duration in seconds)."""
        retry = Retry(1.0, 30.0, (0.5, 1.0), attempts=self.retries)
        while True:
            try:
                return self.attempt_batch()
            except DdlLockTimeout as exc:
                pause = retry.next_pause()
                if pause is None:
                    raise MigrationFailed(
                        self.migration.name,
                        f"batch {self.state.batches + 1}: {exc.message} after {retry.attempt} retries",
                        sqlstate=exc.sqlstate,
                        line=exc.line,
                    ) from None
                logger().warning(
                    "ddl_lock_retry",
                    **self.fields,
                    batch=self.state.batches + 1,
                    attempt=retry.attempt,
                    retry_in_s=round(pause, 2),
                    blockers=self.watcher.blockers,
                    sqlstate=exc.sqlstate,
                    line=exc.line,
                )
                self.watcher.blockers = []
                retry_sleep(pause)

    def attempt_batch(self) -> tuple[bool, float]:
        state = self.state
        upper, covered = self.lookup(self.throttle.size)
        last = upper is None
        text = self.ranged.text(lower=state.after is not None, upper=not last)
        values = tuple(value.encode() for value in (*(state.after or ()), *(upper or ())))
        started, rows_before = time.monotonic(), self.attempt.rows
        self.send(execute.Message.of(self.opening))
        self.send(execute.Message(text, 0, (self.statement,), None, 1, params=values))
        new = State(
            state.after if upper is None else upper,
            state.batches + 1,
            state.rows_done + covered,
            state.rows_changed + self.attempt.rows - rows_before,
        )
        progress = history.BatchProgress(
            self.migration.checksum, new.after, new.batches, new.rows_done, new.rows_changed, finished=last
        )
        parts = [
            *execute.as_runner(self.session),
            history.record_batch(self.table, self.migration, progress, state.batches).as_string(),
        ]
        recorded = len(parts) - 1
        if last:
            elapsed_ms = round((time.monotonic() - self.attempt.started) * 1000)
            parts.append(history.record_success(self.table, self.migration, elapsed_ms).as_string())
        message = execute.Message.of([*parts, "COMMIT"], commits=last)
        self.send(dataclasses.replace(message, record=recorded + 1 if last else None), progress=recorded)
        self.state, self.covered = new, self.covered + covered
        return last, time.monotonic() - started

    def send(self, message: execute.Message, progress: int | None = None) -> None:
        """Send one message of the batch's transaction; an error rolls it back and raises the runner's error."""
        try:
            error = execute.exchange(self.conn, message, self.attempt, self.tick, self.tick_s)
        except Interrupted:
            execute.rollback(self.conn)  # the batch's locks go now, before the failure row is written
            raise
        if error is None:
            return
        index = self.attempt.completed
        if not error.connection_lost:
            execute.rollback(self.conn)
        error = dataclasses.replace(error, position=None)  # a position in the deparsed text is no line of the file
        if progress is None or error.connection_lost or index not in {progress, message.total - 1}:
            raise execute.failure(self.migration, message, error, index, self.table)
        if index == message.total - 1:  # COMMIT: deferred constraints and triggers run here
            raise MigrationFailed(
                self.migration.name, f"COMMIT failed: {error.message}", sqlstate=error.sqlstate, line=None
            )
        where = history.batches_table(self.table).qualified
        moved = f"its progress in {where} moved while this batch ran (another runner?): the batch was rolled back"
        raise execute.record_error(
            self.migration.name, error, ("batch progress", where), history.BATCH_NOT_WRITTEN, moved
        )

    def tick(self, attempt: execute.Attempt) -> None:
        """While a message runs: sample blocking; let the watcher tick at its own interval."""
        if self.blocking is not None:
            try:
                self.blocking.sample()
            except psycopg.Error as exc:
                logger().debug("blocking_unavailable", error=str(exc))
        now = time.monotonic()
        if now - self.ticked >= self.watcher.interval:
            self.ticked = now
            self.watcher.tick(attempt)

    def lookup(self, size: int) -> tuple[tuple[str, ...] | None, int]:
        """(the size-th key after the position, size); (None, the keys left) when fewer are left."""
        columns = [sql.SQL("k.{}").format(sql.Identifier(column)) for column in self.key.columns]
        after = self.state.after or ()
        where: sql.Composable = sql.SQL("")
        if after:
            where = sql.SQL(" WHERE {} OPERATOR({}.>) {}").format(
                row(columns), sql.Identifier(self.key.operators), row([sql.Placeholder()] * len(after))
            )
        upper = sql.SQL("SELECT {} FROM {} AS k{} ORDER BY {} OFFSET %s LIMIT 1").format(
            sql.SQL(", ").join(sql.SQL("{}::pg_catalog.text").format(c) for c in columns),
            self.key.table,
            where,
            sql.SQL(", ").join(columns),
        )
        rest = sql.SQL("SELECT pg_catalog.count(*) FROM {} AS k{}").format(self.key.table, where)
        role = self.session.role
        with watching(self.migration, f"looking up the next keys of {self.key.name}"), self.watch.transaction():
            if role:
                self.watch.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(role)))
            found = self.watch.execute(upper, [*after, size - 1]).fetchone()
            if found is not None:
                return tuple(map(str, found)), size
            left = self.watch.execute(rest, list(after)).fetchone()
            return None, int(left[0]) if left else 0

    def hold_for_replicas(self) -> None:
        """Wait, logging why, while the replicas' replay lag is over ``max-replica-lag``."""
        ceiling = self.throttle.options.max_replica_lag
        if ceiling is None:
            return
        retry, started = Retry(0.5, 5.0), time.monotonic()
        while True:
            with watching(self.migration, "reading the replicas' lag"):
                found = self.watch.execute(REPLICA_LAG_SQL).fetchone()
            lag = found[0] if found else None
            if lag is None or lag <= ceiling:
                return
            pause = retry.next_pause()
            assert pause is not None  # no attempts or deadline: the run's own deadline bounds the wait
            logger().warning(
                "batch_throttled",
                **self.fields,
                reason="replica_lag",
                lag_s=round(lag, 3),
                ceiling_s=ceiling,
                waited_ms=round((time.monotonic() - started) * 1000),
                retry_in_s=round(pause, 2),
            )
            retry_sleep(pause)

    def report(self, *, final: bool) -> None:
        """``batch_progress`` and the progress metrics, every ``watcher.every`` seconds and at the end."""
        now = time.monotonic()
        if not final and now - self.reported < self.watcher.every:
            return
        self.reported = now
        state, estimate = self.state, self.key.estimate
        rate = self.covered / max(now - self.started, 1e-3)
        left = None if final or estimate is None else max(0, estimate - state.rows_done)
        remaining = 0.0 if final else (left / rate if left is not None and rate > 0 else None)
        percent = 100.0 if final else (min(99.9, 100.0 * state.rows_done / estimate) if estimate else None)
        logger().info(
            "batch_progress",
            **self.fields,
            batches=state.batches,
            rows_done=state.rows_done,
            rows_changed=state.rows_changed,
            rows_per_s=round(rate),
            remaining_s=None if remaining is None else round(remaining, 1),
            percent=None if percent is None else round(percent, 1),
            batch_size=self.throttle.size,
        )
        self.watcher.publish_batch(state.rows_done, rate, remaining)


def row(items: list[Any]) -> sql.Composable:
    """One value, or a row of them: ``a`` or ``(a, b)``."""
    return items[0] if len(items) == 1 else sql.SQL("({})").format(sql.SQL(", ").join(items))


def apply(
    conn: Conn,
    watch: Conn,
    migration: Migration,
    analysis: Analysis,
    table: history.Table,
    session: execute.Session,
    attempt: execute.Attempt,
    watcher: Watcher,
    retries: int,
    progress: history.BatchProgress | None,
) -> None:
    """Apply a batched data file to the table's end from ``progress``, as the module docstring says.

    ``conn`` is the work connection; ``watch`` is the runner's own (``migrate.RUNNER_SESSION``: its
    search_path, DateStyle and IntervalStyle pinned, so key values are written as text in one
    style whatever the database's), idle meanwhile. ``attempt`` counts the rows changed and
    turns ``committed`` with the last batch. Raises a ``RunnerError``.
    """
    options, target = migration.directives.batch, analysis.batch
    assert options is not None
    assert target is not None
    (statement,) = analysis.statements
    state = State.of(migration, statement, progress)
    execute.pin_lexing(conn)
    opening = execute.opening(session, execute.timeouts_of(migration, session), transaction=True)
    key = resolve(conn, watch, migration, statement, target, opening)
    if options.max_replica_lag is not None:
        with watching(migration, "reading the replicas' lag"):
            readable = watch.execute(CAN_READ_LAG_SQL).fetchone()
        if not (readable and readable[0]):
            raise DatabaseUnavailable(
                f"{migration.name}: max-replica-lag needs the replicas' lag, which this role cannot read in "
                "pg_stat_replication (grant it pg_read_all_stats)"
            )
    sample_s = min(0.05, max(0.01, (options.time or 0.5) / SAMPLES))
    blocking = Blocking(watch, conn.info.backend_pid) if options.max_blocking is not None else None
    Batches(
        conn,
        watch,
        migration,
        statement,
        table,
        session,
        opening,
        attempt,
        watcher,
        retries,
        key,
        Ranged(migration, statement, target, key),
        state,
        Throttle(options),
        blocking,
        sample_s if blocking else watcher.interval,
    ).run()
