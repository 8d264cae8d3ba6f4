"""Running as an unprivileged user: `dnsbl serve --user NAME[:GROUP]` (config `user`), rbldnsd's `-u`.

Owns who the server runs as. The daemon binds its sockets as root (port 53), then calls `drop`, then
opens the database, loads the data files and forks its workers, so every file is read and written as
the user, and every child process is the user's.

Rules:
- The user and group are looked up when the option is read (`parse_user`): an unknown name is a
  one-line error before anything starts. A name or a number; the group defaults to the user's own.
- The order is setgroups, setgid, setuid (setuid last: after it there is no right left to change the
  groups). Supplementary groups: only GROUP, none of the user's others (the least the server needs).
- A drop that did not take is fatal: the real, effective and saved ids must all be the user's, and
  setuid(0) must then fail. The server never runs on as root when a user was asked for.
- Not root: `--user` naming the current user is accepted (nothing to do), any other is an error.
- `check_db` (after the drop): the database, its -wal and -shm, and their folder must be writable by
  the user, or SQLite fails later with "attempt to write a readonly database"; say which file and who
  owns it, before any query is answered.
"""

from __future__ import annotations

import grp
import os
import pwd
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError


@dataclass(frozen=True)
class User:
    name: str
    uid: int
    gid: int
    group: str

    def __str__(self) -> str:
        return f"{self.name}:{self.group}"


def parse_user(text: str, where: str = "--user") -> User:
    """`NAME[:GROUP]`, either part a name or a number, looked up in the system's databases."""
    name, _, group = text.strip().partition(":")
    if not name:
        raise ConfigError(f"{where}: give a user name, NAME or NAME:GROUP, not {text!r}")
    account = _account(name, where)
    gid = _group_id(group, where) if group else account.pw_gid
    return User(account.pw_name, account.pw_uid, gid, _group_name(gid))


def _account(name: str, where: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwuid(int(name)) if name.isdigit() else pwd.getpwnam(name)
    except KeyError:
        raise ConfigError(
            f"{where}: unknown user {name!r} (create it, e.g. useradd --system {name})"
        ) from None


def _group_id(group: str, where: str) -> int:
    try:
        return grp.getgrgid(int(group)).gr_gid if group.isdigit() else grp.getgrnam(group).gr_gid
    except KeyError:
        raise ConfigError(f"{where}: unknown group {group!r}") from None


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:  # a gid with no name is still a gid
        return str(gid)


def drop(user: User | None) -> None:
    """Become `user` for good (nothing to do for None, or when already that user). ConfigError if this
    process may not, or if the change did not take."""
    if user is None or _already(user):
        return
    if os.geteuid() != 0:
        raise ConfigError(
            f"--user {user.name}: only root can change to another user (running as uid {os.geteuid()})"
        )
    try:
        os.setgroups([user.gid])
        os.setgid(user.gid)
        os.setuid(user.uid)
    except OSError as error:
        raise ConfigError(f"--user {user}: cannot change to that user: {error.strerror}") from None
    _verify(user)


def _already(user: User) -> bool:
    return os.getresuid() == (user.uid,) * 3 and os.getresgid() == (user.gid,) * 3


def _verify(user: User) -> None:
    if not _already(user):
        raise ConfigError(f"--user {user}: the change of user did not take; refusing to run as root")
    if user.uid == 0:
        return
    try:
        os.setuid(0)
    except PermissionError:
        return
    raise ConfigError(f"--user {user}: root could be regained after the change; refusing to run")


def check_db(db: Path, user: User | None) -> None:
    """The database, its -wal and -shm, and its folder writable by the user the server now runs as."""
    if user is None:
        return
    folder = db.parent
    if folder.exists() and not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(
            f"{folder}: folder of the database not writable by user {user.name} (owner {_owner(folder)}): "
            f"SQLite creates {db.name}-wal and {db.name}-shm there; chown {user.name} {folder}"
        )
    for path in (db, Path(f"{db}-wal"), Path(f"{db}-shm")):
        if path.exists() and not os.access(path, os.R_OK | os.W_OK):
            raise ConfigError(
                f"{path}: not writable by user {user.name} (owner {_owner(path)}): chown {user.name} {path}"
            )


def _owner(path: Path) -> str:
    uid = path.stat().st_uid
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)
