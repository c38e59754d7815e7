"""boto3 clients for AWS, or for the local stack's moto server: one code path for both.

boto3 honours AWS_ENDPOINT_URL and AWS_PROFILE by itself; `Endpoint` only adds the
`--endpoint-url` flag and the local stack's address on top, and dummy credentials for moto.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import Any

import boto3
from botocore.config import Config

DEFAULT_REGION = "us-east-1"
TABLE_NAME = "SensorData"
#: moto accepts any credentials; these keep boto3 from looking for real ones.
LOCAL_CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}


@dataclass(frozen=True)
class Endpoint:
    """Where AWS calls go: None for AWS itself, or a URL such as the moto server's."""

    url: str | None = None
    region: str | None = None

    @classmethod
    def local(cls, port: int) -> Endpoint:
        return cls(f"http://127.0.0.1:{port}", DEFAULT_REGION)

    @property
    def is_local(self) -> bool:
        return self.url is not None and self.url.startswith(("http://127.", "http://localhost"))

    def region_name(self) -> str:
        """The region calls go to: the endpoint's, else AWS_REGION, AWS_DEFAULT_REGION."""
        return (
            self.region
            or os.environ.get("AWS_REGION")
            or os.environ.get("AWS_DEFAULT_REGION", DEFAULT_REGION)
        )

    def client(self, service: str, **config: Any) -> Any:
        region = self.region_name()
        config.setdefault("retries", {"mode": "standard", "max_attempts": 5})
        kwargs: dict[str, Any] = {"region_name": region, "config": Config(**config)}
        if self.url:
            kwargs["endpoint_url"] = self.url
        if self.is_local:
            kwargs.update(LOCAL_CREDENTIALS)
        return _session().client(service, **kwargs)


_sessions = threading.local()


def _session() -> boto3.session.Session:
    """One boto3 session per thread: making one reads the credential and config files
    (~0.2 s), and a session is not safe to share between threads."""
    session = getattr(_sessions, "session", None)
    if session is None:
        session = _sessions.session = boto3.session.Session()
    return session
