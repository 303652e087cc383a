"""The export of an account's data (``GET /v1/me/export``): one zip of JSON
and CSV files, with the account's output files in it or linked.

The zip is written to a file (the caller's temporary file), each section
read from the database a page at a time and written straight into its zip
entry, so memory stays bounded whatever the account's history; files are
streamed from storage in chunks.

Output and upload files go into the zip (``outputs/``, ``uploads/``) when
storage is local and they add up to at most ``INLINE_FILES_LIMIT`` bytes;
otherwise (S3 storage, or more than that) the zip lists them with signed
download links valid for ``LINK_LIFETIME``, and ``README.txt`` says which.
"""

from __future__ import annotations

import csv
import io
import json
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import IO, Any

from sqlalchemy import Connection

from plasmaart.accounts.service import User
from plasmaart.billing.service import BillingService
from plasmaart.clock import Clock
from plasmaart.db.engine import Database
from plasmaart.leaving import repository as repo
from plasmaart.ledger.service import LedgerService
from plasmaart.links import Links
from plasmaart.media.signing import sign_url
from plasmaart.media.storage import LocalStorage, Storage, StorageNotFound

# Files go into the zip up to this many bytes in all; past it, links.
INLINE_FILES_LIMIT = 512 * 1024 * 1024
LINK_LIFETIME = timedelta(days=7)
PAGE = 500
# Text kept in memory before it spills to a temporary file.
SPOOL_BYTES = 1024 * 1024
# The sections written as <name>.json and <name>.csv.
TABLES = (
    "ledger",
    "generations",
    "outputs",
    "uploads",
    "payments",
    "teams",
    "api_keys",
    "webhook_endpoints",
    "sessions",
    "notifications",
)
EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp", "video/mp4": "mp4"}


def export_filename(user_id: str, when: datetime) -> str:
    return f"plasmaart-export-{user_id}-{when.date().isoformat()}.zip"


@dataclass(frozen=True)
class Exported:
    rows: dict[str, int]
    files_inline: bool
    files: int


class AccountExport:
    def __init__(
        self,
        clock: Clock,
        ledger: LedgerService,
        billing: BillingService,
        storage: Storage,
        links: Links,
        signing_secret: Callable[[], bytes],
        support_email: str,
        *,
        inline_limit: int = INLINE_FILES_LIMIT,
    ) -> None:
        self.clock = clock
        self.ledger = ledger
        self.billing = billing
        self.storage = storage
        self.links = links
        self.signing_secret = signing_secret
        self.support_email = support_email
        self.inline_limit = inline_limit

    def write(self, db: Database, user: User, target: IO[bytes]) -> Exported:
        """Write the zip of ``user``'s data to ``target``, from one read
        transaction (a consistent picture of the account)."""
        now = self.clock.now()
        rows: dict[str, int] = {}
        with (
            db.read() as conn,
            zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED) as zipped,
        ):
            wallet = self.ledger.wallet_of(conn, "user", user.id)
            _write_json(zipped, "profile.json", self._profile(conn, user, wallet, now))
            for section in TABLES:
                rows[section] = _write_section(zipped, conn, section, user.id, wallet)
            inline, files = self._files(zipped, conn, user.id, wallet)
            zipped.writestr("README.txt", self._readme(user, now, rows, inline, files))
        return Exported(rows, inline, files)

    def _profile(self, conn: Connection, user: User, wallet: str, now: datetime) -> dict[str, Any]:
        balance = self.ledger.balance(conn, wallet)
        plan = self.billing.plans.plan_of(conn, wallet)
        subscription = self.billing.plans.subscription(conn, wallet)
        return {
            "id": user.id,
            "email": user.email,
            "email_verified_at": _iso(user.email_verified_at),
            "role": user.role,
            "status": user.status,
            "status_reason": user.status_reason,
            "created_at": _iso(user.created_at),
            "two_factor": user.two_factor,
            "remove_watermark": user.remove_watermark,
            "plan": plan.id,
            "subscription": None
            if subscription is None
            else {
                "id": subscription.id,
                "plan": subscription.plan,
                "status": subscription.status,
                "current_period_start": _iso(subscription.current_period_start),
                "current_period_end": _iso(subscription.current_period_end),
                "cancel_at_period_end": subscription.cancel_at_period_end,
                "backend": subscription.backend,
            },
            "wallet_id": wallet,
            "balance": {"available": balance.available, "held": balance.held},
            "exported_at": _iso(now),
        }

    def _files(
        self, zipped: zipfile.ZipFile, conn: Connection, user_id: str, wallet: str
    ) -> tuple[bool, int]:
        """The output and upload files: inline, or as links (``files.csv``).
        Two passes over their rows: their total size first, which decides."""
        columns = {s: repo.columns_of(s) for s in ("outputs", "uploads")}
        total = sum(
            int(row.values[columns[section].index("size")] or 0)
            for section in columns
            for row in _rows(conn, section, user_id, wallet)
        )
        inline = isinstance(self.storage, LocalStorage) and total <= self.inline_limit
        expires = self.clock.now() + LINK_LIFETIME
        count = 0
        with tempfile.SpooledTemporaryFile(SPOOL_BYTES, mode="w+", newline="") as listing:
            writer = csv.writer(listing)
            writer.writerow(["kind", "id", "content_type", "size", "file", "url", "url_expires_at"])
            for section in columns:
                for row in _rows(conn, section, user_id, wallet):
                    named = dict(zip(columns[section], row.values, strict=True))
                    kind = "output" if section == "outputs" else "upload"
                    extension = EXTENSIONS.get(str(named["content_type"]), "bin")
                    name = (
                        f"outputs/{named['generation_id']}/{named['position']}.{extension}"
                        if kind == "output"
                        else f"uploads/{named['id']}.{extension}"
                    )
                    described = [kind, named["id"], named["content_type"], named["size"]]
                    if inline and self._copy(zipped, str(named["storage_key"]), name):
                        writer.writerow([*described, name, "", ""])
                    else:
                        path = f"/v1/{section}/{named['id']}/content"
                        url = self.links.base + sign_url(path, expires, self.signing_secret())
                        writer.writerow([*described, "", url, _iso(expires)])
                    count += 1
            _copy_text(zipped, "files.csv", listing)
        return inline, count

    def _copy(self, zipped: zipfile.ZipFile, key: str, name: str) -> bool:
        """Stream a stored file into the zip; False if storage has it no more."""
        try:
            stream = self.storage.open_stream(key)
        except StorageNotFound:
            return False
        try:
            # Already compressed images and videos: stored, not deflated again.
            info = zipfile.ZipInfo(name, date_time=self.clock.now().timetuple()[:6])
            info.compress_type = zipfile.ZIP_STORED
            with zipped.open(info, "w", force_zip64=True) as entry:
                for chunk in stream:
                    entry.write(chunk)
        finally:
            stream.close()
        return True

    def _readme(
        self, user: User, now: datetime, rows: dict[str, int], inline: bool, files: int
    ) -> str:
        counts = "\n".join(f"  {name}: {rows[name]} rows" for name in TABLES)
        where = (
            "They are in this zip under outputs/<generation id>/<position>.<ext> and "
            "uploads/<upload id>.<ext>; files.csv lists them."
            if inline
            else "They are not in this zip (they are stored remotely, or add up to more than "
            f"{self.inline_limit // (1024 * 1024)} MiB): files.csv lists a download link for "
            f"each, valid for {LINK_LIFETIME.days} days."
        )
        return f"""PlasmaArt: the data of account {user.id} ({user.email})
Exported {_iso(now)}.

profile.json        the account: address, role, status, plan and subscription, balance.
ledger.json/.csv    every entry of the journal of your wallet (grants, holds,
                    captures, releases, expiries, refunds, adjustments), oldest first;
                    balance_after is your available balance after each entry.
generations.json/.csv  your generations: prompt, parameters, model, status, and the
                    credits held, charged and the balance after.
outputs.json/.csv   the files your generations produced.
uploads.json/.csv   the input images you uploaded.
payments.json/.csv  every payment: subscriptions, renewals, upgrades, credit packs,
                    with the amount in cents, the credits granted and the receipt number.
teams.json/.csv     the teams you belong to, your role and monthly cap.
api_keys.json/.csv  your API keys: name, prefix and dates (never the secret).
webhook_endpoints.json/.csv  your webhook endpoints: URL, events, state (never the secret).
sessions.json/.csv  your signed-in sessions: browser, address, dates.
notifications.json/.csv  the notices shown to you in the dashboard.
files.csv           every output and upload file ({files} in all).

{counts}

Your files: {where}

Times are UTC (ISO 8601). Credits are whole numbers; amounts are in cents.
Questions: {self.support_email}
"""


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _rows(conn: Connection, section: str, user_id: str, wallet: str) -> Iterator[repo.ExportRow]:
    after: str | None = None
    while True:
        page = repo.export_page(
            conn, section, user_id=user_id, wallet_id=wallet, after=after, limit=PAGE
        )
        yield from page
        if len(page) < PAGE:
            return
        after = page[-1].key


def _write_json(zipped: zipfile.ZipFile, name: str, value: object) -> None:
    zipped.writestr(name, json.dumps(value, indent=2, ensure_ascii=False) + "\n")


def _copy_text(zipped: zipfile.ZipFile, name: str, source: IO[str]) -> None:
    """A text file written aside into the zip, a chunk at a time."""
    source.seek(0)
    with zipped.open(name, "w", force_zip64=True) as entry:
        while chunk := source.read(64 * 1024):
            entry.write(chunk.encode())


def _write_section(
    zipped: zipfile.ZipFile, conn: Connection, section: str, user_id: str, wallet: str
) -> int:
    """``<section>.json`` (an array of objects) and ``<section>.csv``, from
    one pass over the pages: the JSON straight into the zip, the CSV aside
    (a zip takes one entry at a time) in a file that spills to disk past
    ``SPOOL_BYTES``; how many rows."""
    columns = repo.columns_of(section)
    count = 0
    with tempfile.SpooledTemporaryFile(SPOOL_BYTES, mode="w+", newline="") as as_csv:
        writer = csv.writer(as_csv)
        writer.writerow(columns)
        with zipped.open(f"{section}.json", "w", force_zip64=True) as raw_json:
            as_json = io.TextIOWrapper(raw_json, encoding="utf-8", newline="")
            as_json.write("[")
            for row in _rows(conn, section, user_id, wallet):
                as_json.write(",\n  " if count else "\n  ")
                as_json.write(
                    json.dumps(dict(zip(columns, row.values, strict=True)), ensure_ascii=False)
                )
                writer.writerow(["" if value is None else value for value in row.values])
                count += 1
            as_json.write("\n]\n" if count else "]\n")
            as_json.flush()
            as_json.detach()
        _copy_text(zipped, f"{section}.csv", as_csv)
    return count
