"""`kernelsight install-service`: write the systemd unit (deploy/systemd/kernelsight.service)
and its environment file, with ExecStart pointing at this installation's `kernelsight`.

It only writes files; enabling and starting stay with the administrator (systemctl), so the
command is safe to run in image builds and under --prefix staging directories.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import click

from kernelsight.exceptions import ConfigError

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "systemd"
UNIT = "kernelsight.service"
ENV_FILE = "kernelsight.env"
TEMPLATE_EXEC = "/usr/local/bin/kernelsight"
UNIT_DIR = "etc/systemd/system"
ENV_PATH = "etc/default/kernelsight"
DATA_DIR = "/var/lib/kernelsight"
# ProtectHome=yes hides these; an installation under them needs read-only access instead.
HOME_DIRS = ("/home", "/root", "/run/user")


def executable() -> str:
    """The absolute path of this installation's `kernelsight` script."""
    exe = Path(sys.argv[0])
    if exe.name != "kernelsight":
        found = shutil.which("kernelsight") or str(Path(sys.executable).parent / "kernelsight")
        exe = Path(found)
    exe = exe.absolute()
    if not exe.is_file():
        raise ConfigError(f"cannot find the kernelsight executable (tried {exe}); install the "
                          "package (make setup) and run it from its bin directory")
    return str(exe)


def _shipped(name: str) -> str:
    try:
        return (DEPLOY / name).read_text()
    except OSError as e:
        raise ConfigError(f"cannot read {DEPLOY / name} ({e.strerror}): install-service needs "
                          "the repository's deploy/systemd directory (an editable install, "
                          "`make setup`); or copy deploy/systemd/ by hand") from None


def render_unit(exe: str, db_path: str) -> str:
    """The shipped unit with this installation's paths."""
    text = _shipped(UNIT)
    if TEMPLATE_EXEC not in text:
        raise ConfigError(f"{DEPLOY / UNIT} has no ExecStart={TEMPLATE_EXEC} to fill in")
    text = text.replace(TEMPLATE_EXEC, exe)
    data_dir = str(Path(db_path).parent)
    if data_dir != DATA_DIR:
        text = text.replace(f"ReadWritePaths={DATA_DIR}", f"ReadWritePaths={data_dir}")
    if exe.startswith(HOME_DIRS):
        text = text.replace("ProtectHome=yes", "# kernelsight is installed under a home "
                            "directory: read-only, not hidden\nProtectHome=read-only")
    return text


def render_env(db_path: str) -> str:
    return _shipped(ENV_FILE).replace(
        f"KS_DB_PATH={DATA_DIR}/kernelsight.db", f"KS_DB_PATH={db_path}")


@click.command("install-service", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--prefix", type=click.Path(file_okay=False), default="/", show_default=True,
              help="Root to install under (a staging directory for packages and tests).")
@click.option("--db", "db_path", default=f"{DATA_DIR}/kernelsight.db", show_default=True,
              help="Database path written to the environment file (its directory becomes the "
                   "unit's ReadWritePaths).")
@click.option("--force", is_flag=True,
              help="Also overwrite an existing environment file (the unit is always written).")
def command(prefix: str, db_path: str, force: bool) -> None:
    """Write the systemd unit and its environment file (KS_* settings).

    Writes PREFIX/etc/systemd/system/kernelsight.service (Type=notify, watchdog, drain on
    stop, hardened; ExecStart = this kernelsight) and PREFIX/etc/default/kernelsight, which
    is kept if it exists (your settings) unless --force.

    \b
    Examples:
      sudo kernelsight install-service
      sudo systemctl daemon-reload && sudo systemctl enable --now kernelsight
      kernelsight install-service --prefix /tmp/stage --db /srv/ks/kernelsight.db
    """
    if not Path(db_path).is_absolute():
        raise ConfigError(f"--db {db_path}: give an absolute path (a service has no working "
                          f"directory of yours), e.g. {DATA_DIR}/kernelsight.db")
    root = Path(prefix)
    unit_path = root / UNIT_DIR / UNIT
    env_path = root / ENV_PATH
    exe = executable()
    try:
        unit_path.parent.mkdir(parents=True, exist_ok=True)
        unit_path.write_text(render_unit(exe, db_path))
        env_note = "kept (yours; --force overwrites)"
        if force or not env_path.exists():
            env_path.parent.mkdir(parents=True, exist_ok=True)
            env_path.write_text(render_env(db_path))
            env_path.chmod(0o600)  # it may hold a Redis password
            env_note = "written"
    except OSError as e:
        raise ConfigError(f"cannot write under {root}: {e.strerror} ({e.filename}); run as "
                          "root or pass --prefix DIR") from None
    click.echo(f"unit: {unit_path} (ExecStart={exe} run)")
    click.echo(f"settings: {env_path} {env_note}")
    if str(root) == "/":
        click.echo("next: systemctl daemon-reload && systemctl enable --now kernelsight; "
                   "then kernelsight status")
