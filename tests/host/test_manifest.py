"""Manifests are validated without importing plugin code, with errors that name file and key."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent_host.errors import ManifestError
from agent_host.host.manifest import Limits, Manifest, discover
from tests.helpers import make_plugin

CODE = "from agent_host.sdk import Plugin\nclass Detector(Plugin):\n    pass\n"


class TestManifest:
    """A good manifest loads; each kind of bad one raises a ManifestError that says what."""

    def test_good_manifest(self, tmp_path: Path) -> None:
        folder = make_plugin(
            tmp_path,
            "good",
            CODE,
            ("process", "file"),
            extra_toml="""
            [limits]
            memory_mb = 128
            batch_deadline_s = 2
            [config]
            threshold = 200
            """,
        )
        m = Manifest.load(folder / "plugin.toml")
        assert m.name == "good" and m.subscribe == {"process", "file"}
        assert m.limits.memory_mb == 128 and m.limits.batch_deadline_s == 2.0
        assert isinstance(m.limits.batch_deadline_s, float)
        assert m.config_json == '{"threshold": 200}'

    @pytest.mark.parametrize(
        ("toml", "key", "words"),
        [
            ("[plugin\nname=", None, "not valid TOML"),
            ("[other]\n", None, "missing [plugin] table"),
            (
                '[plugin]\nname="x"\nversion="1"\nsubscribe=["process"]\n',
                "plugin.entrypoint",
                "missing",
            ),
            (
                '[plugin]\nname="x"\nversion="1"\nentrypoint="nope:X"\nsubscribe=["process"]\n',
                "plugin.entrypoint",
                "module 'nope' not found",
            ),
            (
                '[plugin]\nname="x"\nversion="1"\nentrypoint="detector"\nsubscribe=["process"]\n',
                "plugin.entrypoint",
                "'module:Class'",
            ),
            (
                '[plugin]\nname="x"\nversion="1"\nentrypoint="detector:D"\nsubscribe=["dns"]\n',
                "plugin.subscribe",
                "non-empty list of process, file, network",
            ),
            (
                '[plugin]\nname="Bad Name"\nversion="1"\nentrypoint="detector:D"\n'
                'subscribe=["file"]\n',
                "plugin.name",
                "not a valid name",
            ),
            (
                '[plugin]\nname="x"\nversion="1"\nentrypoint="detector:D"\nsubscribe=["file"]\n'
                "[limits]\nmemroy_mb=5\n",
                "limits.memroy_mb",
                "unknown limit",
            ),
            (
                '[plugin]\nname="x"\nversion="1"\nentrypoint="detector:D"\nsubscribe=["file"]\n'
                "[limits]\nmemory_mb=-5\n",
                "limits.memory_mb",
                "positive number",
            ),
        ],
    )
    def test_bad_manifest(self, tmp_path: Path, toml: str, key: str | None, words: str) -> None:
        (tmp_path / "detector.py").write_text(CODE)
        path = tmp_path / "plugin.toml"
        path.write_text(toml)
        with pytest.raises(ManifestError) as info:
            Manifest.load(path)
        assert info.value.key == key
        assert words in str(info.value)
        assert str(path) in str(info.value)


class TestDiscover:
    """discover() keeps the good plugins and reports each bad one, without importing any."""

    def test_every_mistake_is_named_with_its_line_and_the_name_meant(self, tmp_path: Path) -> None:
        """An author fixes a manifest in one go: every mistake at once, in the file's order,
        each with its line, and "did you mean" for a misspelt table or key."""
        path = tmp_path / "plugin.toml"
        (tmp_path / "detector.py").write_text(CODE)
        path.write_text(
            "[plugin]\n"
            'name = "p"\n'
            'version = "1"\n'
            'entrypoint = "detector:Detector"\n'
            'subscribe = ["process", "dns"]\n'
            'descripton = "typo"\n'
            "[limit]\n"
            "memory_mb = 64\n"
            "[limits]\n"
            "memory_mbs = 64\n"
            "open_files = -1\n"
            "[permissions]\n"
            "network = 1\n"
        )
        with pytest.raises(ManifestError) as info:
            Manifest.load(path)
        lines = str(info.value).splitlines()
        assert [line.split(": ", 2)[:2] for line in lines] == [
            [f"{path}:5", "plugin.subscribe"],
            [f"{path}:6", "plugin.descripton"],
            [f"{path}:7", "limit"],
            [f"{path}:10", "limits.memory_mbs"],
            [f"{path}:11", "limits.open_files"],
            [f"{path}:13", "permissions.network"],
        ]
        assert "did you mean 'description'?" in lines[1]
        assert "unknown table; did you mean 'limits'?" in lines[2]
        assert "did you mean 'memory_mb'?" in lines[3]
        assert len(info.value.mistakes) == 6

    def test_bad_ones_reported_good_ones_kept(self, tmp_path: Path) -> None:
        make_plugin(tmp_path, "alpha", CODE)
        make_plugin(tmp_path, "beta", "raise SystemExit('imported!')\n")  # must not be imported
        broken = make_plugin(tmp_path, "gamma", CODE)
        (broken / "plugin.toml").write_text("[plugin]\nname = 'gamma'\n")
        dup = make_plugin(tmp_path, "zeta", CODE)
        (dup / "plugin.toml").write_text((tmp_path / "alpha" / "plugin.toml").read_text())
        found = discover(tmp_path)
        assert [m.name for m in found.manifests] == ["alpha", "beta"]
        assert [(e.path.parent.name, e.key) for e in found.errors] == [
            ("gamma", "plugin.version"),
            ("zeta", "plugin.name"),
        ]

    def test_limits_defaults_are_sane(self) -> None:
        limits = Limits()
        assert 0 < limits.batch_deadline_s <= 30 and limits.memory_mb >= 64


class TestTrustedFolders:
    """A plugin another user could change is code that user could run in the agent: refused,
    naming the file, and the other plugins still load."""

    def test_a_file_writable_by_every_user_is_refused(self, tmp_path: Path) -> None:
        good = make_plugin(tmp_path, "good", "")
        bad = make_plugin(tmp_path, "bad", "")
        (bad / "detector.py").chmod(0o666)
        found = discover(tmp_path)
        assert [m.name for m in found.manifests] == ["good"] and good.is_dir()
        (error,) = found.errors
        assert f"{bad / 'detector.py'} is writable by every user" in str(error)

    def test_a_file_of_another_user_is_refused(self, tmp_path: Path) -> None:
        if os.geteuid() != 0:
            pytest.skip("only root can give a file to another user")
        bad = make_plugin(tmp_path, "bad", "")
        os.chown(bad / "plugin.toml", 65534, 65534)
        (error,) = discover(tmp_path).errors
        assert f"{bad / 'plugin.toml'} is owned by uid 65534" in str(error)

    def test_a_group_writable_folder_of_a_foreign_group_is_refused(self, tmp_path: Path) -> None:
        if os.geteuid() != 0:
            pytest.skip("only root can give a folder to another group")
        bad = make_plugin(tmp_path, "bad", "")
        os.chown(bad, 0, 65534)
        bad.chmod(0o775)
        (error,) = discover(tmp_path).errors
        assert f"{bad} is writable by group 65534" in str(error)
