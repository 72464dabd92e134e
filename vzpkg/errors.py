"""The one user-facing error type and the exit-code table.

Codes below 200 follow vzctl's documented exit statuses where the meaning is the same (so scripts
written against OpenVZ keep working); codes from 200 up are vzpkg's own. The table is documented
in docs/exit-codes.md and must be kept in step with it.
"""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    OK = 0
    FAILURE = 1  # an operation failed (e.g. one of several caches did not build)
    USAGE = 2  # bad command line (click's own code)
    SYSTEM = 3  # generic system error
    EXEC_FAILED = 8  # vzctl exec: the command returned non-zero
    LOCKED = 9  # another invocation holds the lock
    CONFIG = 10  # host configuration file missing or invalid
    TOOL_MISSING = 11  # a required host program is not installed
    PERMISSION = 12  # must be run as root
    CT_CONFIG_MISSING = 14
    PKG_NOT_RUNNING = 15  # vzpkg (vztt's code): the VPS is not running
    CT_NOT_FOUND = 16  # vzpkg (vztt's code): the VPS does not exist
    INVALID_ARGUMENT = 20
    INVALID_VALUE = 21
    PKG_TEMPLATE_NOT_FOUND = 24  # vzpkg (vztt's code): the VPS's template is unknown
    NOT_RUNNING = 31
    RUNNING = 32
    STOP_FAILED = 33
    NET_SETUP = 34  # the VPS's network could not be set up (vzctl: "Unable to add IP address")
    NOT_MOUNTED = 40
    MOUNTED = 41
    PRIVATE_MISSING = 43
    PRIVATE_EXISTS = 44
    FS_NO_DISK_SPACE = 46  # not enough disk space (a VPS's files do not fit its disk)
    BAD_CT = 47  # no /sbin/init nor /bin/sh in the VPS
    MOUNT_FAILED = 50
    UMOUNT_FAILED = 51
    DESTROY_FAILED = 52
    NOTENOUGH_QUOTA_LIMITS = 55  # a disk smaller than the files on it
    DQ_SET = 62  # a VPS's disk could not be made or resized (vzctl: setting the quota failed)
    PKGMGR_FAILED = 70  # vzpkg (vztt's code): the package manager failed
    IP_IN_USE = 78  # an address another running VPS holds
    TEMPLATE_NOT_FOUND = 91  # unknown template name, or no cache for it
    # vzpkg's own
    METADATA_INVALID = 201  # template metadata failed validation
    SIGNATURE = 202  # repository or package signature could not be verified
    BOOTSTRAP = 203  # the bootstrap tool (mmdebstrap, debootstrap, dnf) failed
    HOOK = 204  # a template hook failed
    ARCHIVE = 205  # a cache archive is corrupt or unsafe
    UPSTREAM = 206  # a repository could not be reached
    INTERRUPTED = 130  # SIGINT, as shells report it


class VzError(Exception):
    """An error the user can act on: a message, an exit code and an optional hint."""

    def __init__(self, message: str, code: ExitCode = ExitCode.FAILURE, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.code = code
        self.hint = hint

    def __str__(self) -> str:
        return self.message if self.hint is None else f"{self.message}\n  hint: {self.hint}"


def network_reason(error: BaseException) -> str:
    """What went wrong with a request, in a few words, not a library's exception chain."""
    text = str(error)
    for needle, reason in (
        ("NameResolutionError", "the host name does not resolve"),
        ("Name or service not known", "the host name does not resolve"),
        ("Temporary failure in name resolution", "the host name does not resolve"),
        ("Connection refused", "connection refused"),
        ("timed out", "timed out"),
        ("Read timed out", "timed out"),
        ("Network is unreachable", "the network is unreachable"),
        ("No route to host", "no route to the host"),
        ("CERTIFICATE_VERIFY_FAILED", "its TLS certificate does not verify"),
        ("IncompleteRead", "the connection closed early"),
        ("Connection reset", "the connection was reset"),
        ("RemoteDisconnected", "the server closed the connection"),
    ):
        if needle in text:
            return reason
    return text if len(text) <= 200 else text[:200] + "..."
