"""Builds reference-schema HR rows for tests, one readable call per row."""

from __future__ import annotations

import datetime as dt
from typing import Any

import sqlalchemy as sa

from pipelines.demo import create_reference_schema, employees, leave_types, leaves, legal_entities


class HRBuilder:
    """A reference-schema HR database with a few defaults: two entities, two leave types."""

    def __init__(self, engine: sa.Engine, defaults: bool = True) -> None:
        self.engine = engine
        self.url = engine.url.render_as_string(hide_password=False)
        create_reference_schema(engine)
        self._next_leave = 1
        if defaults:
            self.entity("FR", "Europe/Paris", (9, 0), (13, 0), (18, 0))
            self.entity("US", "America/New_York", (9, 0), (12, 30), (17, 30))
            self.leave_type("PTO", "Paid leave")
            self.leave_type("SICK", "Sick leave", sensitive=True)

    def _insert(self, table: sa.Table, **values: Any) -> None:
        with self.engine.begin() as conn:
            conn.execute(table.insert().values(**values))

    def entity(self, code: str, tz: str, start=(9, 0), midday=(13, 0), end=(17, 30)) -> None:
        self._insert(
            legal_entities,
            code=code,
            name=f"Entity {code}",
            timezone=tz,
            workday_start=dt.time(*start),
            midday=dt.time(*midday),
            workday_end=dt.time(*end),
        )

    def leave_type(self, code: str, name: str, sensitive: bool = False) -> None:
        self._insert(leave_types, code=code, name=name, sensitive=sensitive)

    def employee(
        self,
        id: int,
        entity: str = "FR",
        email: str | None = "",
        name: str | None = None,
        sync_enabled: bool = True,
        active: bool = True,
        team: str | None = None,
    ) -> str | None:
        if email == "":
            email = f"emp{id}@example.com"
        self._insert(
            employees,
            id=id,
            legal_entity=entity,
            email=email,
            display_name=name or f"Employee {id}",
            sync_enabled=sync_enabled,
            active=active,
            team=team,
        )
        return email

    def leave(
        self,
        employee_id: int,
        start: dt.date,
        end: dt.date | None = None,
        status: str = "approved",
        type: str = "PTO",
        id: int | None = None,
        **extra: Any,
    ) -> int:
        lid = id if id is not None else self._next_leave
        self._next_leave = max(self._next_leave, lid + 1)
        self._insert(
            leaves,
            id=lid,
            employee_id=employee_id,
            leave_type=type,
            status=status,
            start_date=start,
            end_date=end or start,
            **{"updated_at": dt.datetime(2026, 1, 1), **extra},
        )
        return lid

    def update_leave(self, lid: int, **values: Any) -> None:
        with self.engine.begin() as conn:
            conn.execute(leaves.update().where(leaves.c.id == lid).values(**values))

    def update_employee(self, eid: int, **values: Any) -> None:
        with self.engine.begin() as conn:
            conn.execute(employees.update().where(employees.c.id == eid).values(**values))

    def delete_leave(self, lid: int) -> None:
        with self.engine.begin() as conn:
            conn.execute(leaves.delete().where(leaves.c.id == lid))

    def execute(self, sql: str, **params: Any) -> None:
        with self.engine.begin() as conn:
            conn.execute(sa.text(sql), params)
