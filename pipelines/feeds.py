"""`leavesync feeds`: each employee's private feed URL (ics targets), and rotating one."""

from __future__ import annotations

import csv
import sys

from resources.config import AppConfig, ConfigError

SETUP = 2


def shared_calendars(target, hr) -> list[str]:
    """Every shared calendar a team target names; for ics grouped by legal entity, also the
    feed of each legal entity HR knows (a feed is named after its group by default)."""
    from assets.render import configured_calendars, team_feed_of

    calendars = configured_calendars(target)
    if target.type == "ics" and target.team.group_by == "legal_entity":
        named = set(target.team.calendars)
        calendars += [team_feed_of(c) for c in hr.legal_entities() if c not in named]
    return sorted(set(calendars))


def feeds(cfg: AppConfig, names: list[str], as_csv: bool, rotate: str | None) -> int:
    """Print email, legal entity and URL per employee HR knows; or rotate one person's URL."""
    from pipelines.definitions import build_resources
    from resources.providers.ics import IcsProvider

    targets = [t for t in cfg.targets if t.type == "ics" and (not names or t.name in names)]
    unknown = set(names) - {t.name for t in cfg.targets if t.type == "ics"}
    if unknown or not targets:
        raise ConfigError(
            f"no ics target named {', '.join(sorted(unknown))}"
            if unknown
            else "no ics target in the configuration: feeds are an ics target's"
        )
    resources = build_resources(cfg)
    providers: list[IcsProvider] = []
    for target in targets:
        provider = resources["settings"].provider(target.name)
        assert isinstance(provider, IcsProvider)
        if not provider.private:
            raise ConfigError(
                f"ics target {target.name}: feed names are guessable (<email>.ics) until "
                f"environment variable {provider.settings.feed_key_env} "
                "(settings.feed_key_env) holds a secret key; set it, and run this again"
            )
        if not provider.settings.base_url:
            raise ConfigError(
                f"ics target {target.name}: settings.base_url is not set: where is "
                f"{provider.directory} served (e.g. https://calendars.example.com/leaves)?"
            )
        providers.append(provider)

    if rotate:
        team_feed = rotate.startswith("teams/")  # a team feed's calendar, as `feeds` lists it
        for provider in providers:
            kind = resources["settings"].target(provider.target_name).kind
            if (kind == "team") != team_feed:
                continue
            provider.rotate(rotate)
            print(f"{provider.target_name}: {rotate.strip().lower()}: {provider.feed_url(rotate)}")
        print("the old URL no longer works: send the new one to its owner", file=sys.stderr)
        return 0

    hr = resources["hr"]
    people = hr.employee_emails(hr.legal_entities())
    writer = csv.writer(sys.stdout, lineterminator="\n") if as_csv else None
    header = ["email", "legal_entity", "url"] + (["target"] if len(providers) > 1 else [])
    if writer:
        writer.writerow(header)
    rows = []
    for provider in providers:
        target = resources["settings"].target(provider.target_name)
        if target.team is not None:  # a team target's feeds: one per group, not per person
            for calendar in shared_calendars(target, hr):
                row = [calendar, "", provider.feed_url(calendar)]
                rows.append(row + ([provider.target_name] if len(providers) > 1 else []))
            continue
        serves = target.serves
        domains = {d.lower().lstrip("@") for d in serves.email_domains}
        for email, entity in people.sort_values("employee_email").itertuples(index=False):
            if serves.legal_entities and entity not in serves.legal_entities:
                continue
            if domains and email.rsplit("@", 1)[-1] not in domains:
                continue
            row = [email, entity, provider.feed_url(email)]
            row += [provider.target_name] if len(providers) > 1 else []
            rows.append(row)
    if writer:
        writer.writerows(rows)
    else:
        widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
        for row in [header, *rows]:
            print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return 0
