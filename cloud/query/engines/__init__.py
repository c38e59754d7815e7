"""SQL engines over an export: DuckDB in process, or Athena on AWS. One interface for both.

An engine is bound to one export (`DataLocation`) and exposes the tables of `cloud.query.schema`
whose data that export holds. User values reach SQL only as `?` parameters (`Param`).
"""

from __future__ import annotations

import datetime as dt
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Protocol

from cloud.errors import ConfigError, PipelineError

#: What may be bound to a `?` placeholder: each engine knows how to pass these as values.
Param = str | int | float | dt.datetime

ENGINES = ("duckdb", "athena")


class QueryError(PipelineError):
    """A query cannot run or failed; `code` is the engine's error class or AWS's state/code."""

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code


class QueryResult(NamedTuple):
    columns: list[str]
    rows: list[tuple[Any, ...]]


# Bucket names as S3 allows them; keys limited to characters that need no quoting in a SQL
# string literal, a Hive DDL LOCATION or a glob (no quote, backslash, `*?[{`).
_S3_URL = re.compile(r"^s3://([a-z0-9][a-z0-9.-]{1,61}[a-z0-9])((?:/[A-Za-z0-9!_.()=+,@~-]*)*)$")
_UNSAFE_PATH_CHARS = set("'\\*?[]{}\0\n\r")


@dataclass(frozen=True)
class DataLocation:
    """The root of an export: an absolute folder or `s3://bucket[/prefix]`, no trailing slash.

    Validated here because engines put it into view and table definitions as a literal:
    locations come from this type, never from free user SQL.
    """

    url: str

    def __post_init__(self) -> None:
        if self.url.startswith("s3:"):
            if not _S3_URL.match(self.url) or self.url.endswith("/") or "//" in self.url[5:]:
                raise ConfigError(
                    f"{self.url!r} is not an S3 location this tool reads: use "
                    "s3://BUCKET/PREFIX with letters, digits and /_.-=+ in the prefix"
                )
        else:
            if not self.url.startswith("/") or (self.url != "/" and self.url.endswith("/")):
                raise ConfigError(f"{self.url!r}: a data folder must be an absolute path")
            bad = sorted(_UNSAFE_PATH_CHARS.intersection(self.url))
            if bad:
                raise ConfigError(f"{self.url!r}: a data folder may not contain {bad}")

    @classmethod
    def parse(cls, text: str, option: str = "--data") -> DataLocation:
        """A folder (which must exist) or an S3 URL, as a user types it."""
        text = text.strip()
        if text.startswith("s3://"):
            try:
                return cls(text.rstrip("/"))
            except ConfigError as exc:
                raise ConfigError(f"{option}: {exc}") from None
        if "://" in text:
            raise ConfigError(f"{option}: {text!r}: give a folder or s3://BUCKET/PREFIX")
        folder = Path(text).expanduser().resolve()
        if not folder.is_dir():
            raise ConfigError(
                f"{option}: {folder} is not a folder; give the folder `cloud export --to` wrote"
            )
        try:
            return cls(str(folder))
        except ConfigError as exc:
            raise ConfigError(f"{option}: {exc}") from None

    @classmethod
    def of(cls, where: Where) -> DataLocation:
        return where if isinstance(where, DataLocation) else cls.parse(os.fspath(where))

    @property
    def is_s3(self) -> bool:
        return self.url.startswith("s3://")

    @property
    def bucket(self) -> str:
        return self.url[5:].split("/", 1)[0]

    @property
    def key_prefix(self) -> str:
        """The S3 key prefix of the root, ending in '/' unless it is the bucket itself."""
        rest = self.url[5:].split("/", 1)
        return rest[1] + "/" if len(rest) == 2 and rest[1] else ""

    def join(self, *parts: str) -> str:
        return "/".join([self.url.rstrip("/"), *parts])

    def __str__(self) -> str:
        return self.url


#: An export's root as callers may give it: a validated location, a path, or text.
Where = DataLocation | str | os.PathLike[str]


class Engine(Protocol):
    """What `cloud.query.run` needs of an engine; both engines are bound to one export."""

    name: str
    data: DataLocation

    def tables(self) -> frozenset[str]:
        """The schema tables this export has data for (never empty: opening fails first)."""
        ...

    def execute(self, sql: str, params: list[Param] | None = None) -> QueryResult: ...

    def close(self) -> None: ...


def is_data_file(path: str, base: str) -> bool:
    """Athena and Hive skip files and folders whose names start with `.` or `_` (temporary
    files, markers); so does the DuckDB engine, so both read the same rows. `path` lies
    under the folder `base` (which ends in '/')."""
    return not any(part.startswith((".", "_")) for part in path[len(base) :].split("/"))


def sql_literal(text: str) -> str:
    """A SQL string literal, for our own validated locations and settings only: user values
    are bound as parameters instead."""
    return "'" + text.replace("'", "''") + "'"


def first_line(message: str) -> str:
    """Engines explain over several lines (LINE 1: ..., a caret); a CLI error is one line."""
    return next((line.strip() for line in message.splitlines() if line.strip()), message)
