"""Live progress of a sync: bars on a terminal (rich), plain lines otherwise."""

from __future__ import annotations

import sys
from typing import TextIO


class LiveProgress:
    """Entities done and changes applied per target, as they happen."""

    def __init__(self, entities: int | None, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stdout
        self.entities = entities
        self.live = self.stream.isatty()
        self._progress = None
        self._entity_task = None
        self._target_tasks: dict[tuple[str, str], int] = {}
        self._printed: dict[tuple[str, str], int] = {}

    def __enter__(self) -> LiveProgress:
        if self.live:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                console=Console(file=self.stream),
                transient=True,
            )
            self._progress.start()
            self._entity_task = self._progress.add_task("legal entities", total=self.entities)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def start(self, entities: int) -> None:
        """The number of legal entities, once the runner knows it."""
        self.entities = entities
        if self._progress is not None:
            self._progress.update(self._entity_task, total=entities)

    def line(self, message: str) -> None:
        if self._progress is not None:
            self._progress.console.print(message, markup=False, highlight=False)
        else:
            print(message, file=self.stream, flush=True)

    def entity_done(self, run) -> None:
        if self._progress is not None:
            self._progress.advance(self._entity_task)
            for key in [k for k in self._target_tasks if k[0] == run.label]:
                self._progress.remove_task(self._target_tasks.pop(key))

    def change(self, entity: str, target: str, done: int, total: int) -> None:
        key = (entity, target)
        if self._progress is not None:
            if key not in self._target_tasks:
                self._target_tasks[key] = self._progress.add_task(
                    f"  {entity} → {target}: changes applied", total=total
                )
            self._progress.update(self._target_tasks[key], completed=done, total=total)
        elif self._printed.get(key) != done:
            self._printed[key] = done
            self.line(f"{entity}: target {target}: {done}/{total} changes applied")
