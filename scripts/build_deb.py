"""Build a Debian package of agent-host: ``python scripts/build_deb.py [--out DIR]``.

The package (``agent-host_VERSION_ARCH.deb``) holds:

- the agent-host wheel and every wheel it needs, for this Python (``/usr/share/agent-host/
  wheels``); its postinst makes ``/opt/agent-host/venv`` from them, offline, apart from the
  system's Python packages, and ``/usr/bin/agent-host`` runs from it;
- the systemd unit (``/lib/systemd/system/agent-host.service``, hardened, Type=notify; not
  enabled: ``systemctl enable --now agent-host`` is the operator's decision);
- ``/etc/agent-host/agent-host.toml``, every setting commented out at its default (a conffile:
  an upgrade keeps the operator's edits), and ``/etc/agent-host/plugins`` for their own;
- a logrotate file for the findings file (SIGHUP reopens it);
- the folders, with their modes: ``/var/lib/agent-host`` 0700, ``/var/log/agent-host`` 0750;
- bash and zsh completion and the man page, generated from the parser.

It depends on the Python minor version it was built with (the wheels' ABI) and on
python3-venv. Building needs dpkg-deb and the dev extra (argparse-manpage); the wheels come from
the package index.
"""

from __future__ import annotations

import argparse
import gzip
import io
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from argparse_manpage.manpage import Manpage

from agent_host import __version__
from agent_host.cli import config_file, systemd
from agent_host.cli.parser import build_parser, command_parser

REPO = Path(__file__).resolve().parent.parent
PACKAGING = REPO / "packaging" / "debian"
VENV = "/opt/agent-host/venv"


def _write(root: Path, path: str, text: str | bytes, mode: int = 0o644) -> None:
    target = root / path.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, str):
        target.write_text(text)
    else:
        target.write_bytes(text)
    target.chmod(mode)


def _man_page() -> bytes:
    page = Manpage(
        build_parser(),
        format="pretty",
        _data={
            "project_name": "agent-host",
            "description": "a user-mode security agent: detection plugins in sandboxed workers",
            "manual_section": "8",
            "manual_title": "agent-host manual",
            "version": __version__,
        },
    )
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", mtime=0) as compressed:  # reproducible
        compressed.write(str(page).encode())
    return out.getvalue()


def _completion(shell: str) -> str:
    return subprocess.run(
        [sys.executable, "-m", "agent_host", "completion", shell],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def _control(root: Path) -> None:
    arch = _arch()
    major, minor = sys.version_info[:2]
    size_kib = sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) // 1024
    _write(
        root,
        "DEBIAN/control",
        f"Package: agent-host\n"
        f"Version: {__version__}\n"
        f"Architecture: {arch}\n"
        f"Maintainer: agent-host developers <agent-host@localhost>\n"
        f"Depends: python3 (>= {major}.{minor}), python3 (<< {major}.{minor + 1}), python3-venv\n"
        f"Recommends: logrotate\n"
        f"Section: admin\n"
        f"Priority: optional\n"
        f"Installed-Size: {size_kib}\n"
        f"Description: user-mode security agent with sandboxed detection plugins\n"
        f" Every detection plugin runs in its own sandboxed worker process: one that\n"
        f" crashes, hangs or misbehaves is restarted or set aside, and takes down\n"
        f" nothing but itself.\n",
    )
    _write(
        root, "DEBIAN/conffiles", "/etc/agent-host/agent-host.toml\n/etc/logrotate.d/agent-host\n"
    )
    for script in ("postinst", "prerm", "postrm"):
        shutil.copy(PACKAGING / script, root / "DEBIAN" / script)
        (root / "DEBIAN" / script).chmod(0o755)


def build(out: Path) -> Path:
    parser = build_parser()
    with tempfile.TemporaryDirectory() as work:
        root = Path(work) / "root"
        wheels = root / "usr/share/agent-host/wheels"
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "wheel",
                "--quiet",
                "--wheel-dir",
                str(wheels),
                str(REPO),
            ],
            check=True,
        )
        _write(root, "/usr/bin/agent-host", f'#!/bin/sh\nexec {VENV}/bin/agent-host "$@"\n', 0o755)
        _write(
            root,
            "/lib/systemd/system/agent-host.service",
            systemd.unit_text(f"{VENV}/bin/agent-host"),
        )
        _write(
            root,
            "/etc/agent-host/agent-host.toml",
            config_file.commented_default(command_parser(parser, "run")),
        )
        _write(root, "/etc/logrotate.d/agent-host", (PACKAGING / "logrotate").read_text())
        for shell, path in (
            ("bash", "/usr/share/bash-completion/completions/agent-host"),
            ("zsh", "/usr/share/zsh/vendor-completions/_agent-host"),
        ):
            _write(root, path, _completion(shell))
        _write(root, "/usr/share/man/man8/agent-host.8.gz", _man_page())
        for folder, mode in (
            ("etc/agent-host/plugins", 0o755),
            ("var/lib/agent-host", 0o700),
            ("var/log/agent-host", 0o750),
        ):
            (root / folder).mkdir(parents=True, exist_ok=True)
            (root / folder).chmod(mode)
        _control(root)
        out.mkdir(parents=True, exist_ok=True)
        package = out / f"agent-host_{__version__}_{_arch()}.deb"
        subprocess.run(
            ["dpkg-deb", "--root-owner-group", "-Zxz", "--build", str(root), str(package)],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    return package


def _arch() -> str:
    return subprocess.run(
        ["dpkg", "--print-architecture"], capture_output=True, text=True, check=True
    ).stdout.strip()


def main() -> None:
    options = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    options.add_argument("--out", type=Path, default=REPO / "dist", help="default: dist/")
    args = options.parse_args()
    os.umask(0o022)  # the package's modes are the files', whatever the builder's umask
    print(build(args.out))


if __name__ == "__main__":
    main()
