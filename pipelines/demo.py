"""The reference HR schema and a realistic, deterministic demo (or benchmark) data set."""

from __future__ import annotations

import datetime as dt
import random
from dataclasses import dataclass

import sqlalchemy as sa

hr_metadata = sa.MetaData()
legal_entities = sa.Table(
    "legal_entities",
    hr_metadata,
    sa.Column("code", sa.String(32), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("timezone", sa.String(64), nullable=False),
    sa.Column("workday_start", sa.Time, nullable=False),
    sa.Column("midday", sa.Time, nullable=False),
    sa.Column("workday_end", sa.Time, nullable=False),
    # Indexed: the hr_changes sensor reads only the rows changed since its cursor.
    sa.Column("updated_at", sa.DateTime, index=True),
)
employees = sa.Table(
    "employees",
    hr_metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    # No foreign keys: real HR databases do not enforce them either, and the extract must
    # bring dangling rows through to validation.
    sa.Column("legal_entity", sa.String(32), index=True),
    sa.Column("email", sa.String(320)),
    sa.Column("display_name", sa.String(400)),
    # Optional: the group of team calendars grouped by team (a department, a squad).
    sa.Column("team", sa.String(200)),
    sa.Column("sync_enabled", sa.Boolean, nullable=False, server_default=sa.true()),
    sa.Column("active", sa.Boolean, nullable=False, server_default=sa.true()),
    sa.Column("updated_at", sa.DateTime, index=True),
)
leave_types = sa.Table(
    "leave_types",
    hr_metadata,
    sa.Column("code", sa.String(32), primary_key=True),
    sa.Column("name", sa.String(400), nullable=False),
    sa.Column("sensitive", sa.Boolean, nullable=False, server_default=sa.false()),
)
leaves = sa.Table(
    "leaves",
    hr_metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("employee_id", sa.Integer, index=True),
    sa.Column("leave_type", sa.String(32)),
    sa.Column("status", sa.String(16)),
    sa.Column("start_date", sa.Date, index=True),
    sa.Column("end_date", sa.Date),
    sa.Column("start_half", sa.String(2)),
    sa.Column("end_half", sa.String(2)),
    sa.Column("start_time", sa.Time),
    sa.Column("end_time", sa.Time),
    sa.Column("updated_at", sa.DateTime, index=True),
)

ENTITIES = [
    ("FR", "Acme France SAS", "Europe/Paris", "acme.fr", (9, 0), (13, 0), (18, 0)),
    ("US-NY", "Acme Inc. New York", "America/New_York", "acme.com", (9, 0), (12, 30), (17, 30)),
    ("JP", "Acme KK", "Asia/Tokyo", "acme.co.jp", (9, 30), (13, 0), (18, 30)),
    ("AU", "Acme Pty Ltd", "Australia/Sydney", "acme.com.au", (8, 30), (12, 30), (17, 0)),
    ("BR", "Acme Brasil Ltda", "America/Sao_Paulo", "acme.com.br", (8, 0), (12, 0), (17, 0)),
]
LEAVE_TYPES = [
    ("PTO", "Paid leave", False),
    ("RTT", "Reduced working time", False),
    ("SICK", "Sick leave", True),
    ("UNPAID", "Unpaid leave", False),
    ("TRAINING", "Training", False),
    ("PARENTAL", "Parental leave", False),
]
FIRST = [
    "Alice",
    "Bruno",
    "Chloé",
    "Dmitri",
    "Emma",
    "Farid",
    "Grace",
    "Hiro",
    "Inès",
    "João",
    "Kenji",
    "Léa",
    "Mateo",
    "Nadia",
    "Olivier",
    "Priya",
    "Quentin",
    "Rosa",
    "Sven",
    "Tomoko",
    "Ugo",
    "Valentina",
    "Wei",
    "Yasmine",
    "Zoé",
]
TEAMS = ["Engineering", "Sales", "Operations", "Finance"]
LAST = [
    "Martin",
    "Bernard",
    "Smith",
    "Johnson",
    "Sato",
    "Suzuki",
    "Silva",
    "Santos",
    "Nguyen",
    "Müller",
    "García",
    "O'Brien",
    "Dubois",
    "Kowalski",
    "Rossi",
    "Tanaka",
    "Costa",
    "Brown",
]


@dataclass(frozen=True)
class Scale:
    entities: int = 5
    employees: int = 500
    leaves_per_employee: float = 6.0
    days_back: int = 182
    days_ahead: int = 183


def create_reference_schema(engine: sa.Engine) -> None:
    hr_metadata.create_all(engine)


def _entities(n: int) -> list[tuple]:
    out = list(ENTITIES[:n])
    for i in range(len(out), n):  # benchmark scales: more entities, same shapes
        base = ENTITIES[i % len(ENTITIES)]
        out.append((f"{base[0]}-{i}", f"{base[1]} {i}", *base[2:]))
    return out


def dst_days(year: int) -> list[dt.date]:
    """The days clocks change in Europe (last Sundays of March and October) and the US."""

    def last_sunday(month: int) -> dt.date:
        d = dt.date(year, month + 1, 1) - dt.timedelta(days=1)
        return d - dt.timedelta(days=(d.weekday() + 1) % 7)

    def nth_sunday(month: int, n: int) -> dt.date:
        d = dt.date(year, month, 1)
        d += dt.timedelta(days=(6 - d.weekday()) % 7)
        return d + dt.timedelta(weeks=n - 1)

    return [last_sunday(3), last_sunday(10), nth_sunday(3, 2), nth_sunday(11, 1)]


def generate(today: dt.date, scale: Scale = Scale(), seed: int = 7) -> dict[str, list[dict]]:
    """Rows for every reference table; the same inputs always give the same rows."""
    rng = random.Random(seed)
    ents = _entities(scale.entities)
    # Every row was last changed yesterday morning (HR's updated_at, what the sensor polls).
    stamp = dt.datetime.combine(today, dt.time(6, 0)) - dt.timedelta(days=1)
    entity_rows = [
        {
            "code": code,
            "name": name,
            "timezone": tz,
            "workday_start": dt.time(*ws),
            "midday": dt.time(*md),
            "workday_end": dt.time(*we),
            "updated_at": stamp,
        }
        for code, name, tz, _, ws, md, we in ents
    ]
    employee_rows = []
    for i in range(1, scale.employees + 1):
        code, _, _, domain, *_ = ents[(i - 1) % len(ents)]
        first, last = rng.choice(FIRST), rng.choice(LAST)
        local = f"{first}.{last}".lower().replace("'", "").replace("é", "e").replace("è", "e")
        local = local.replace("ü", "u").replace("ã", "a").replace("ç", "c")
        employee_rows.append(
            {
                "id": i,
                "legal_entity": code,
                "email": f"{local}.{i}@{domain}",
                "display_name": f"{first} {last}",
                "team": TEAMS[(i - 1) // len(ents) % len(TEAMS)],  # drawn from no rng: same data
                "sync_enabled": rng.random() > 0.015,  # a few opted out
                "active": rng.random() > 0.01,  # a few left the company
                "updated_at": stamp,
            }
        )
    type_weights = [0.55, 0.12, 0.13, 0.05, 0.1, 0.05]
    statuses = ["approved", "pending", "rejected", "cancelled"]
    status_weights = [0.7, 0.15, 0.08, 0.07]
    dst = [d for y in (today.year - 1, today.year, today.year + 1) for d in dst_days(y)]
    window_start = today - dt.timedelta(days=scale.days_back)
    span = scale.days_back + scale.days_ahead
    leave_rows = []
    n_leaves = int(scale.employees * scale.leaves_per_employee)
    for lid in range(1, n_leaves + 1):
        emp = rng.randint(1, scale.employees)
        kind = rng.random()
        if kind < 0.05 and dst:  # multi-day leave across a DST change
            pivot = rng.choice(dst)
            start = pivot - dt.timedelta(days=rng.randint(1, 4))
            end = pivot + dt.timedelta(days=rng.randint(1, 4))
        else:
            start = window_start + dt.timedelta(days=rng.randrange(span))
            end = start + dt.timedelta(days=rng.choice([0, 0, 0, 1, 2, 4, 6, 13]))
        row = {
            "id": lid,
            "employee_id": emp,
            "leave_type": rng.choices([t[0] for t in LEAVE_TYPES], type_weights)[0],
            "status": rng.choices(statuses, status_weights)[0],
            "start_date": start,
            "end_date": end,
            "start_half": None,
            "end_half": None,
            "start_time": None,
            "end_time": None,
            "updated_at": stamp,
        }
        shape = rng.random()
        if shape < 0.05 and start == end:  # hourly leave
            h = rng.randint(9, 14)
            row["start_time"], row["end_time"] = dt.time(h, 0), dt.time(h + rng.randint(1, 3), 0)
        elif shape < 0.12:  # half day(s)
            if start == end:
                row[rng.choice(["start_half", "end_half"])] = "PM" if rng.random() < 0.5 else "AM"
                if row["start_half"] == "AM":
                    row["start_half"] = None
                if row["end_half"] == "PM":
                    row["end_half"] = None
            else:
                row["start_half"] = "PM"
        leave_rows.append(row)
    return {
        "legal_entities": entity_rows,
        "employees": employee_rows,
        "leave_types": [{"code": c, "name": n, "sensitive": s} for c, n, s in LEAVE_TYPES],
        "leaves": leave_rows,
    }


def demo_bad_rows(today: dt.date, first_id: int) -> list[dict]:
    """A few rows real HR databases contain, for the demo to show quarantine at work."""
    base = {
        "leave_type": "PTO",
        "status": "approved",
        "start_half": None,
        "end_half": None,
        "start_time": None,
        "end_time": None,
        "updated_at": dt.datetime.combine(today, dt.time(6, 0)),
    }
    d = today + dt.timedelta(days=10)
    return [
        {**base, "id": first_id, "employee_id": 999_999, "start_date": d, "end_date": d},
        {
            **base,
            "id": first_id + 1,
            "employee_id": 1,
            "start_date": d,
            "end_date": d - dt.timedelta(days=3),
        },
        {
            **base,
            "id": first_id + 2,
            "employee_id": 2,
            "leave_type": "NOPE",
            "start_date": d,
            "end_date": d,
        },
    ]


def seed(
    engine: sa.Engine,
    today: dt.date,
    scale: Scale = Scale(),
    seed: int = 7,
    with_bad_rows: bool = False,
) -> dict[str, int]:
    """Create the reference schema and fill it (replacing what was there)."""
    create_reference_schema(engine)
    data = generate(today, scale, seed)
    if with_bad_rows:
        data["leaves"] += demo_bad_rows(today, len(data["leaves"]) + 1)
    with engine.begin() as conn:
        for table in (leaves, employees, leave_types, legal_entities):
            conn.execute(table.delete())
        for table in (legal_entities, leave_types, employees, leaves):
            rows = data[table.name]
            for i in range(0, len(rows), 5000):
                conn.execute(table.insert(), rows[i : i + 5000])
    return {name: len(rows) for name, rows in data.items()}
