"""Backups and restores: the database and the media in one archive
(``plasmaart backup`` / ``plasmaart restore``, docs/deployment.md#backups)."""

from plasmaart.backup.archive import BackupError, Manifest
from plasmaart.backup.service import BackupResult, RestoreResult, back_up, restore_backup

__all__ = [
    "BackupError",
    "BackupResult",
    "Manifest",
    "RestoreResult",
    "back_up",
    "restore_backup",
]
