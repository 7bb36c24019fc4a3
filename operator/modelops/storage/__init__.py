"""The artifact store: MinIO or any S3-compatible server, through the ``minio`` client.

Key layout, under one bucket::

    <bucket>/<namespace>/<model>/<run-uid>/model.skops      the fitted estimator (skops)
    <bucket>/<namespace>/<model>/<run-uid>/metrics.json     evaluation metrics
    <bucket>/<namespace>/<model>/<run-uid>/profile.json     reference profile for drift
    <bucket>/<namespace>/<model>/<run-uid>/summary.json     the trainer's summary
    <bucket>/<namespace>/sketches/<deployment>/<version>/<window-start>-<pod>.json

Datasets may live anywhere the credentials reach (``s3://<bucket>/<key>``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import os
from dataclasses import dataclass

from minio import Minio
from minio.error import S3Error
from urllib3.exceptions import HTTPError


class ArtifactError(Exception):
    """An artifact could not be read as asked; the message says why in one line."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Location:
    bucket: str
    key: str

    @classmethod
    def parse(cls, uri: str) -> Location:
        if not uri.startswith("s3://") or "/" not in uri[5:]:
            raise ValueError(f"not an s3://bucket/key URI: {uri!r}")
        bucket, key = uri[5:].split("/", 1)
        if not bucket or not key:
            raise ValueError(f"not an s3://bucket/key URI: {uri!r}")
        return cls(bucket, key)

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


@dataclass(frozen=True)
class ObjectInfo:
    """One object's identity as the store reports it, without its bytes.

    ``etag`` is the S3 ETag without quotes (an MD5 of the bytes for a single-part upload;
    it changes whenever the object is written anew); ``last_modified`` is UTC; ``size`` is
    in bytes.
    """

    location: Location
    etag: str
    last_modified: dt.datetime
    size: int


MISSING_CODES = ("NoSuchKey", "NoSuchBucket", "NoSuchObject")


def run_prefix(bucket: str, namespace: str, model: str, run_uid: str) -> Location:
    return Location(bucket, f"{namespace}/{model}/{run_uid}")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class ArtifactStore:
    """put/get of whole objects with their sha256; the one module that talks to S3."""

    def __init__(
        self,
        endpoint: str,
        access_key: str,
        secret_key: str,
        *,
        secure: bool = False,
        region: str = "us-east-1",
    ) -> None:
        self.client = Minio(
            endpoint, access_key=access_key, secret_key=secret_key, secure=secure, region=region
        )

    @classmethod
    def from_env(cls) -> ArtifactStore:
        """Inside pods: endpoint and credentials come from the environment."""
        try:
            return cls(
                os.environ["MODELOPS_S3_ENDPOINT"],
                os.environ["AWS_ACCESS_KEY_ID"],
                os.environ["AWS_SECRET_ACCESS_KEY"],
                secure=os.environ.get("MODELOPS_S3_SECURE", "false").lower() == "true",
            )
        except KeyError as exc:
            raise ArtifactError("MissingConfig", f"environment variable {exc} is not set") from None

    def ensure_bucket(self, bucket: str) -> None:
        if not self.client.bucket_exists(bucket):
            try:
                self.client.make_bucket(bucket)
            except S3Error as exc:
                # Another process may have created it between the check and the call.
                if exc.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                    raise

    def put(
        self, loc: Location, data: bytes, content_type: str = "application/octet-stream"
    ) -> str:
        """Store the bytes; return their sha256 (also kept as object metadata)."""
        digest = sha256_hex(data)
        self.client.put_object(
            loc.bucket,
            loc.key,
            io.BytesIO(data),
            len(data),
            content_type=content_type,
            metadata={"sha256": digest},
        )
        return digest

    def get(self, loc: Location) -> bytes:
        try:
            response = self.client.get_object(loc.bucket, loc.key)
        except S3Error as exc:
            if exc.code in ("NoSuchKey", "NoSuchBucket", "NoSuchObject"):
                raise ArtifactError("ArtifactMissing", f"{loc.uri} does not exist") from None
            raise
        try:
            return response.read()
        finally:
            response.close()
            response.release_conn()

    def get_verified(self, loc: Location, sha256: str) -> bytes:
        """The object's bytes, only if they hash to ``sha256``: nothing unverified is loaded."""
        data = self.get(loc)
        actual = sha256_hex(data)
        if actual != sha256:
            raise ArtifactError(
                "DigestMismatch", f"{loc.uri} has sha256 {actual}, expected {sha256}"
            )
        return data

    def exists(self, loc: Location) -> bool:
        try:
            self.client.stat_object(loc.bucket, loc.key)
        except S3Error as exc:
            if exc.code in MISSING_CODES:
                return False
            raise
        return True

    def stat(self, loc: Location) -> ObjectInfo | None:
        """The object's ETag, last-modified time and size (one HEAD request); None if absent.

        Raises :class:`ArtifactError` ``StoreUnavailable`` when the store does not answer or
        refuses (bad credentials, a server error).
        """
        try:
            obj = self.client.stat_object(loc.bucket, loc.key)
        except S3Error as exc:
            if exc.code in MISSING_CODES:
                return None
            raise ArtifactError(
                "StoreUnavailable", f"{loc.uri}: {exc.code}: {exc.message}"
            ) from None
        except HTTPError as exc:
            raise ArtifactError("StoreUnavailable", f"{loc.uri}: {exc}") from None
        return _object_info(loc, obj.etag, obj.last_modified, obj.size)

    def list_objects(self, loc: Location, *, start_after: str | None = None) -> list[ObjectInfo]:
        """Every object under the prefix ``loc.key``, recursively, with ETag, last-modified
        time and size, in key order: one ListObjectsV2 request per 1000 keys, no object read.

        ``start_after`` (a key, not necessarily an existing one) lists only the keys after it
        in S3's order (UTF-8 bytes, so for ASCII keys Python's ``str`` order); the server
        skips the others, they are neither sent nor counted against the 1000 of a page. It is
        ListObjectsV2's ``StartAfter`` (exclusive).

        An absent bucket lists as empty. Raises :class:`ArtifactError` ``StoreUnavailable``
        when the store does not answer or refuses.
        """
        try:
            return [
                _object_info(Location(loc.bucket, o.object_name), o.etag, o.last_modified, o.size)
                for o in self.client.list_objects(
                    loc.bucket, prefix=loc.key, recursive=True, start_after=start_after
                )
                if o.object_name and not o.is_dir
            ]
        except S3Error as exc:
            if exc.code == "NoSuchBucket":
                return []
            raise ArtifactError(
                "StoreUnavailable", f"{loc.uri}: {exc.code}: {exc.message}"
            ) from None
        except HTTPError as exc:
            raise ArtifactError("StoreUnavailable", f"{loc.uri}: {exc}") from None

    def list(self, loc: Location, *, start_after: str | None = None) -> list[str]:
        """Keys under a prefix, recursively, in key order; with ``start_after``, only the keys
        after it (as :meth:`list_objects`)."""
        return [
            str(o.object_name)
            for o in self.client.list_objects(
                loc.bucket, prefix=loc.key, recursive=True, start_after=start_after
            )
            if o.object_name
        ]

    def delete_prefix(self, loc: Location) -> int:
        keys = self.list(loc)
        for key in keys:
            self.client.remove_object(loc.bucket, key)
        return len(keys)


def _object_info(
    loc: Location, etag: str | None, modified: dt.datetime | None, size: int | None
) -> ObjectInfo:
    when = modified or dt.datetime.fromtimestamp(0, dt.UTC)
    if when.tzinfo is None:  # S3 times are UTC, whether or not the client says so
        when = when.replace(tzinfo=dt.UTC)
    return ObjectInfo(loc, (etag or "").strip('"'), when, size or 0)
