"""Packing sources reproducibly, the excludes, and refusing unsafe archives."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from mlcloud.errors import SpecError
from providers.common import staging
from providers.common.staging import code_key, pack_source, safe_extract, write_source_dir


def make_source(root: Path) -> Path:
    files = {
        "train.py": "print('hi')\n",
        "pkg/__init__.py": "",
        "pkg/model.py": "X = 1\n",
        "data/a.csv": "1,2\n",
        "run.sh": "#!/bin/sh\necho hi\n",
    }
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    (root / "run.sh").chmod(0o775)
    return root


def members(data: bytes) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        return {m.name: m for m in tar.getmembers()}


def test_pack_is_byte_identical_and_content_addressed(tmp_path: Path) -> None:
    src = make_source(tmp_path / "src")
    first = pack_source(src)
    second = pack_source(src)
    assert first.data == second.data
    assert first.sha256 == second.sha256 and len(first.sha256) == 64
    assert first.size == len(first.data)

    # Timestamps, and a copy made elsewhere with other umask-ish modes, do not change the bytes.
    for path in src.rglob("*"):
        os.utime(path, (1_000_000, 1_000_000))
    (src / "pkg" / "model.py").chmod(0o600)
    assert pack_source(src).sha256 == first.sha256

    (src / "pkg" / "model.py").write_text("X = 2\n")
    assert pack_source(src).sha256 != first.sha256


def test_archive_metadata_is_normalised(tmp_path: Path) -> None:
    archive = pack_source(make_source(tmp_path / "src"))
    assert archive.data[4:8] == b"\0\0\0\0"  # gzip header mtime
    found = members(archive.data)
    assert tuple(sorted(found)) == archive.files
    for info in found.values():
        assert info.isreg()
        assert (info.mtime, info.uid, info.gid, info.uname, info.gname) == (0, 0, 0, "", "")
    assert found["run.sh"].mode == 0o755
    assert found["train.py"].mode == 0o644


def test_runtime_is_vendored(tmp_path: Path) -> None:
    src = make_source(tmp_path / "src")
    archive = pack_source(src)
    runtime_files = {
        "_mlcloud/launcher.py",
        "_mlcloud/vendor/mlcloud/__init__.py",
        "_mlcloud/vendor/mlcloud/runtime.py",
        "_mlcloud/vendor/mlcloud/modeldir.py",
    }
    assert runtime_files <= set(archive.files)
    launcher = Path(staging.__file__).with_name("launcher.py").read_bytes()
    with tarfile.open(fileobj=io.BytesIO(archive.data), mode="r:gz") as tar:
        shipped = tar.extractfile("_mlcloud/launcher.py")
        assert shipped is not None and shipped.read() == launcher
    bare = pack_source(src, include_runtime=False)
    assert not any(name.startswith("_mlcloud/") for name in bare.files)
    assert set(bare.files) == {
        "train.py",
        "pkg/__init__.py",
        "pkg/model.py",
        "data/a.csv",
        "run.sh",
    }


def test_reserved_runtime_dir_in_source_is_refused(tmp_path: Path) -> None:
    src = make_source(tmp_path / "src")
    (src / "_mlcloud").mkdir()
    (src / "_mlcloud" / "x.py").write_text("")
    with pytest.raises(SpecError, match="reserved"):
        pack_source(src)
    assert "_mlcloud/x.py" in pack_source(src, include_runtime=False).files


def test_always_excluded(tmp_path: Path) -> None:
    src = make_source(tmp_path / "src")
    for name in (
        ".git/HEAD",
        "pkg/__pycache__/model.cpython-311.pyc",
        "old.pyc",
        ".venv/bin/python",
        "venv/lib/x.py",
        "web/node_modules/a.js",
        ".mypy_cache/x",
        ".pytest_cache/x",
        "nb/.ipynb_checkpoints/a.ipynb",
        "pkg/.DS_Store",
    ):
        path = src / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")
    # A negation in the user's file cannot bring them back.
    (src / ".gitignore").write_text("!old.pyc\n")
    files = set(pack_source(src, include_runtime=False).files)
    assert files == {
        ".gitignore",
        "train.py",
        "pkg/__init__.py",
        "pkg/model.py",
        "data/a.csv",
        "run.sh",
    }


def test_gitignore_patterns(tmp_path: Path) -> None:
    src = make_source(tmp_path / "src")
    for name in (
        "logs/a.log",
        "keep.log",
        "other.log",
        "build/out.bin",
        "pkg/build/inner.txt",
        "docs/build/x.txt",
        "deep/a/b/c/tmp.dat",
        "notes.md",
        "pkg/notes.md",
        "#hash.txt",
        "data/big/x.bin",
    ):
        path = src / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")
    (src / ".gitignore").write_text(
        "\n".join(
            [
                "# comment",
                "",
                "*.log",
                "!keep.log",
                "/build/",  # anchored: only the top-level build dir
                "docs/**/x.txt",
                "deep/**/tmp.dat",
                "/notes.md",
                "\\#hash.txt",
                "data/big",
            ]
        )
    )
    files = set(pack_source(src, include_runtime=False).files)
    assert "keep.log" in files
    assert not {"logs/a.log", "other.log", "build/out.bin"} & files
    assert "pkg/build/inner.txt" in files
    assert "docs/build/x.txt" not in files
    assert "deep/a/b/c/tmp.dat" not in files
    assert "notes.md" not in files and "pkg/notes.md" in files
    assert "#hash.txt" not in files
    assert "data/big/x.bin" not in files and "data/a.csv" in files


def test_mlcloudignore_wins_over_gitignore(tmp_path: Path) -> None:
    src = make_source(tmp_path / "src")
    (src / ".gitignore").write_text("data/\n")
    (src / ".mlcloudignore").write_text("pkg/\n")
    files = set(pack_source(src, include_runtime=False).files)
    assert "data/a.csv" in files
    assert not any(f.startswith("pkg/") for f in files)


def test_dir_only_pattern_keeps_a_file_of_that_name(tmp_path: Path) -> None:
    src = make_source(tmp_path / "src")
    (src / "out").write_text("a file")
    (src / "sub" / "out").mkdir(parents=True)
    (src / "sub" / "out" / "f").write_text("x")
    (src / ".mlcloudignore").write_text("out/\n")
    files = set(pack_source(src, include_runtime=False).files)
    assert "out" in files and "sub/out/f" not in files


def test_symlinks(tmp_path: Path) -> None:
    src = make_source(tmp_path / "src")
    (src / "alias.py").symlink_to(src / "train.py")
    (src / "pkglink").symlink_to(src / "pkg", target_is_directory=True)
    files = pack_source(src, include_runtime=False).files
    assert "alias.py" in files and "pkglink/model.py" in files
    found = members(pack_source(src, include_runtime=False).data)
    assert found["alias.py"].isreg()

    secret = tmp_path / "credentials"
    secret.write_text("aws_secret_access_key=x")
    (src / "creds").symlink_to(secret)
    with pytest.raises(SpecError, match="outside the source"):
        pack_source(src)
    (src / ".mlcloudignore").write_text("creds\n")
    assert "creds" not in pack_source(src).files


def test_symlink_loop_is_not_followed_forever(tmp_path: Path) -> None:
    src = make_source(tmp_path / "src")
    (src / "pkg" / "up").symlink_to(src, target_is_directory=True)
    files = pack_source(src, include_runtime=False).files
    assert "pkg/model.py" in files
    assert not any(name.startswith("pkg/up/pkg/up/") for name in files)


def test_source_must_be_a_directory(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="not a directory"):
        pack_source(tmp_path / "missing")
    (tmp_path / "f.py").write_text("")
    with pytest.raises(SpecError, match="not a directory"):
        pack_source(tmp_path / "f.py")


def test_size_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = make_source(tmp_path / "src")
    monkeypatch.setattr(staging, "MAX_SOURCE_BYTES", 20)
    with pytest.raises(SpecError, match="over 20 bytes") as info:
        pack_source(src)
    assert info.value.hint and ".mlcloudignore" in info.value.hint
    monkeypatch.undo()
    with pytest.raises(SpecError, match="over 30 bytes"):
        pack_source(src, max_bytes=30)
    assert pack_source(src, include_runtime=False, max_bytes=10_000).files


def test_write_source_dir_matches_archive(tmp_path: Path) -> None:
    src = make_source(tmp_path / "src")
    (src / ".mlcloudignore").write_text("data/\n")
    names = write_source_dir(src, tmp_path / "out")
    archive = pack_source(src)
    assert names == list(archive.files)
    extracted = tmp_path / "extracted"
    safe_extract(archive.data, extracted)
    for name in names:
        assert (tmp_path / "out" / name).read_bytes() == (extracted / name).read_bytes()
    assert os.access(tmp_path / "out" / "run.sh", os.X_OK)
    assert not (tmp_path / "out" / "data").exists()


def test_code_key(tmp_path: Path) -> None:
    archive = pack_source(make_source(tmp_path / "src"))
    assert code_key("", archive) == f"code/{archive.sha256}.tar.gz"
    assert code_key("/mlcloud/jobs/", archive) == f"mlcloud/jobs/code/{archive.sha256}.tar.gz"


# ---- safe_extract ---------------------------------------------------------------------------
def craft(*members: tarfile.TarInfo, payload: bytes = b"x") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for info in members:
            if info.isreg():
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
            else:
                tar.addfile(info)
    return buf.getvalue()


def regular(name: str) -> tarfile.TarInfo:
    return tarfile.TarInfo(name)


def link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info


@pytest.mark.parametrize(
    ("members", "bad"),
    [
        ((regular("ok.txt"), regular("../x")), "../x"),
        ((regular("a/../../x"),), "a/../../x"),
        ((regular("/etc/passwd"),), "/etc/passwd"),
        ((link("l", "/etc/passwd"),), "l"),
        ((link("l", "../../x"),), "l"),
        ((link("h", "ok.txt", tarfile.LNKTYPE),), "h"),
        ((link("dev", "", tarfile.CHRTYPE),), "dev"),
        ((link("fifo", "", tarfile.FIFOTYPE),), "fifo"),
    ],
)
def test_safe_extract_refuses(
    tmp_path: Path, members: tuple[tarfile.TarInfo, ...], bad: str
) -> None:
    dest = tmp_path / "dest"
    with pytest.raises(ValueError, match="unsafe archive member") as info:
        safe_extract(craft(*members), dest)
    assert repr(bad) in str(info.value)
    assert list(dest.iterdir()) == []  # checked before anything is written
    assert not (tmp_path / "x").exists()


def test_safe_extract_refuses_symlink_planted_in_dest(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "sub").symlink_to(outside, target_is_directory=True)
    with pytest.raises(ValueError, match="outside the destination"):
        safe_extract(craft(regular("sub/evil.py")), dest)
    assert list(outside.iterdir()) == []


def test_safe_extract_round_trip_from_path(tmp_path: Path) -> None:
    src = make_source(tmp_path / "src")
    archive = pack_source(src)
    path = tmp_path / "code.tar.gz"
    path.write_bytes(archive.data)
    names = safe_extract(path, tmp_path / "dest")
    assert sorted(names) == list(archive.files)
    assert (tmp_path / "dest" / "pkg" / "model.py").read_text() == "X = 1\n"
    assert os.access(tmp_path / "dest" / "run.sh", os.X_OK)


def test_mlclouds_own_home_inside_the_source_is_never_packed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A project keeping MLCLOUD_HOME inside its source (e.g. ./.mlcloud) ships neither the
    state store nor its job dirs, and packing never opens state.db (which would drop this
    process's SQLite locks on it)."""
    from mlcloud.store import Store

    src = make_source(tmp_path / "src")
    home = src / "state-home"
    monkeypatch.setenv("MLCLOUD_HOME", str(home))
    Store.open().close()
    (home / "jobs" / "j-1").mkdir(parents=True)
    (home / "jobs" / "j-1" / "record.json").write_text("{}")
    names = set(members(pack_source(src).data))
    assert "pkg/model.py" in names
    assert not [n for n in names if n.startswith("state-home")]
