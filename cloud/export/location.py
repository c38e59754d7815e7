"""The root of an export, as `cloud export --to` writes it and `cloud query --data` reads it:
one type, parsed and validated once, that gives the writer its `Destination` and the query
engines the folder or S3 prefix they read.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from cloud.aws import Endpoint
from cloud.errors import ConfigError
from cloud.export.folder import LocalFolder
from cloud.export.s3 import S3Prefix
from cloud.export.storage import Destination

# Bucket names as S3 allows them; keys limited to characters that need no quoting in a SQL
# string literal, a Hive DDL LOCATION or a glob (no quote, backslash, `*?[{`).
_S3_URL = re.compile(r"^s3://([a-z0-9][a-z0-9.-]{1,61}[a-z0-9])((?:/[A-Za-z0-9!_.()=+,@~-]*)*)$")
_UNSAFE_PATH_CHARS = set("'\\*?[]{}\0\n\r")


@dataclass(frozen=True)
class ExportRoot:
    """An absolute folder or `s3://bucket[/prefix]`, no trailing slash.

    Validated here because the query engines put it into view and table definitions as a
    literal: locations come from this type, never from free user SQL. The exporter takes the
    same rules, so whatever it writes can be queried.
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
    def to_read(cls, text: str, option: str = "--data") -> ExportRoot:
        """A folder (which must exist) or an S3 URL, as a user types it."""
        return cls._parse(text, option, must_exist=True)

    @classmethod
    def to_write(cls, text: str, option: str = "--to") -> ExportRoot:
        """A folder (made on the first write) or an S3 URL, as a user types it."""
        return cls._parse(text, option, must_exist=False)

    @classmethod
    def _parse(cls, text: str, option: str, *, must_exist: bool) -> ExportRoot:
        text = text.strip()
        if text.startswith("s3://"):
            url = text.rstrip("/")
        elif "://" in text:
            raise ConfigError(f"{option}: {text!r}: give a folder or s3://BUCKET/PREFIX")
        elif must_exist:
            folder = Path(text).expanduser().resolve()
            if not folder.is_dir():
                raise ConfigError(
                    f"{option}: {folder} is not a folder; give the folder `cloud export --to` wrote"
                )
            url = str(folder)
        else:
            # absolute(), not resolve(): a writer names the folder as given, symlinks kept.
            url = str(Path(text).expanduser().absolute())
        try:
            return cls(url)
        except ConfigError as exc:
            raise ConfigError(f"{option}: {exc}") from None

    @classmethod
    def of(cls, where: Where) -> ExportRoot:
        return where if isinstance(where, ExportRoot) else cls.to_read(os.fspath(where))

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

    def destination(self, endpoint: Endpoint | None = None) -> Destination:
        """Where to write this root: S3 through `endpoint` (e.g. the moto server), or the
        folder."""
        if self.is_s3:
            return S3Prefix((endpoint or Endpoint()).client("s3"), self.bucket, self.key_prefix)
        return LocalFolder(Path(self.url))

    def __str__(self) -> str:
        return self.url


#: An export's root as callers may give it: a validated root, a path, or text.
Where = ExportRoot | str | os.PathLike[str]


def open_destination(url: str, endpoint: Endpoint | None = None) -> Destination:
    """The Destination for `--to` as a user types it."""
    return ExportRoot.to_write(url, "--to").destination(endpoint)
