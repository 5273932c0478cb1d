"""Packing a job's source directory into a reproducible archive, and extracting one safely.

The archive is content-addressed (``code_key``): identical sources give identical bytes, so a
re-submitted job re-uses the uploaded code. Every timestamp, owner and mode that would make the
bytes depend on the machine or the checkout time is normalised.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import re
import stat
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from mlcloud.errors import SpecError
from mlcloud.store import mlcloud_home

MAX_SOURCE_BYTES = 500 * 1024 * 1024
RUNTIME_DIR = "_mlcloud"
LAUNCHER_PATH = f"{RUNTIME_DIR}/launcher.py"
VENDOR_DIR = f"{RUNTIME_DIR}/vendor"

# Never shipped, whatever the ignore files say (caches, VCS data, virtualenvs).
ALWAYS_EXCLUDE = (
    ".git/",
    "__pycache__/",
    "*.pyc",
    ".venv/",
    "venv/",
    "node_modules/",
    ".mypy_cache/",
    ".pytest_cache/",
    ".ipynb_checkpoints/",
    ".DS_Store",
)
IGNORE_FILES = (".mlcloudignore", ".gitignore")


@dataclass(frozen=True)
class SourceArchive:
    data: bytes
    sha256: str
    files: tuple[str, ...]

    @property
    def size(self) -> int:
        return len(self.data)


# ---- gitignore-style patterns ---------------------------------------------------------------
@dataclass(frozen=True)
class _Rule:
    regex: re.Pattern[str]
    negate: bool
    dir_only: bool


def _translate(pattern: str) -> str:
    """Glob (``*``, ``?``, ``[..]``, ``**``) → regex over a relative posix path."""
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("/**", i) and i + 3 == n:
            out.append("/.*")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[":
            end = pattern.find("]", i + 2)
            if end == -1:
                out.append(re.escape("["))
                i += 1
                continue
            body = pattern[i + 1 : end]
            if body[0] in "!^":
                body = "^" + body[1:]
            out.append("[" + body.replace("\\", "\\\\") + "]")
            i = end + 1
        elif pattern[i] == "\\" and i + 1 < n:
            out.append(re.escape(pattern[i + 1]))
            i += 2
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return "".join(out)


def parse_ignore(lines: list[str] | tuple[str, ...]) -> list[_Rule]:
    rules: list[_Rule] = []
    for raw in lines:
        line = raw.rstrip("\n").rstrip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        if negate or line.startswith("\\"):  # "\#file" / "\!file" are literal
            line = line[1:]
        dir_only = line.endswith("/")
        line = line.rstrip("/")
        if not line:
            continue
        # A slash anywhere but the end anchors the pattern to the source root.
        anchored = "/" in line
        body = _translate(line.lstrip("/"))
        regex = re.compile(("^" if anchored else "^(?:.*/)?") + body + "$")
        rules.append(_Rule(regex, negate, dir_only))
    return rules


def _ignored(rules: list[_Rule], rel: str, is_dir: bool) -> bool:
    result = False
    for rule in rules:
        if rule.dir_only and not is_dir:
            continue
        if rule.regex.match(rel):
            result = not rule.negate
    return result


def _user_rules(source: Path) -> list[_Rule]:
    for name in IGNORE_FILES:
        path = source / name
        if path.is_file():
            return parse_ignore(path.read_text(encoding="utf-8", errors="replace").splitlines())
    return []


# ---- collecting the file set ----------------------------------------------------------------
@dataclass(frozen=True)
class _Entry:
    name: str
    path: Path | None  # None: ``data`` holds the content
    data: bytes | None
    executable: bool


def _walk(source: Path) -> Iterator[tuple[str, Path]]:
    """(relative name, real file) for every file kept by the excludes, symlinks followed."""
    root = source.resolve()
    always = parse_ignore(ALWAYS_EXCLUDE)
    user = _user_rules(source)
    # mlcloud's own home (the state store, job dirs, tokens) inside a source is never shipped;
    # nor read: opening state.db here would drop this process's SQLite locks on it.
    home = mlcloud_home().resolve()

    def escapes(path: Path) -> bool:
        return path != root and root not in path.parents

    def visit(directory: Path, rel: str, ancestors: tuple[Path, ...]) -> Iterator[tuple[str, Path]]:
        real_dir = directory.resolve()
        if real_dir in ancestors or real_dir == home:  # a link back up the tree would loop
            return
        ancestors = (*ancestors, real_dir)
        for entry in sorted(os.scandir(directory), key=lambda e: e.name):
            name = f"{rel}{entry.name}"
            is_dir = entry.is_dir(follow_symlinks=True)
            if _ignored(always, name, is_dir) or _ignored(user, name, is_dir):
                continue
            path = Path(entry.path)
            if entry.is_symlink():
                target = path.resolve()
                # Following a link out of the source could ship e.g. ~/.aws/credentials.
                if escapes(target):
                    raise SpecError(
                        f"source file {name!r} is a symlink pointing outside the source "
                        f"directory ({target})",
                        hint="copy the file into the source, or add it to .mlcloudignore",
                    )
                path = target
            if is_dir:
                yield from visit(path, name + "/", ancestors)
            elif entry.is_file(follow_symlinks=True):
                yield name, path
            # sockets, fifos and devices are not source code: skipped

    yield from visit(root, "", ())


def _runtime_entries() -> list[_Entry]:
    import mlcloud

    pkg = Path(mlcloud.__file__).resolve().parent
    init = (
        '"""mlcloud runtime, vendored into a job archive."""\n\n'
        f'__version__ = "{mlcloud.__version__}"\n'
    )
    return [
        _Entry(LAUNCHER_PATH, Path(__file__).resolve().parent / "launcher.py", None, True),
        _Entry(f"{VENDOR_DIR}/mlcloud/__init__.py", None, init.encode(), False),
        _Entry(f"{VENDOR_DIR}/mlcloud/runtime.py", pkg / "runtime.py", None, False),
        _Entry(f"{VENDOR_DIR}/mlcloud/modeldir.py", pkg / "modeldir.py", None, False),
        _Entry(f"{VENDOR_DIR}/mlcloud/modelprofile.py", pkg / "modelprofile.py", None, False),
        _Entry(f"{VENDOR_DIR}/mlcloud/errors.py", pkg / "errors.py", None, False),
    ]


def _human(size: int) -> str:
    return f"{size / 2**20:.0f} MiB" if size >= 2**20 else f"{size} bytes"


def source_dir(source: str | Path) -> Path:
    """The job's source directory (a path or file:// URI), or SpecError."""
    path = Path(str(source).removeprefix("file://"))
    if not path.is_dir():
        raise SpecError(
            f"source {str(path)!r} is not a directory",
            hint="set `source:` in the job spec to the directory holding your training code",
        )
    return path


def collect(
    source: Path, *, include_runtime: bool = True, max_bytes: int | None = None
) -> list[_Entry]:
    """The sorted file set of ``source`` (plus the runtime), checked for size."""
    source = source_dir(source)
    limit = MAX_SOURCE_BYTES if max_bytes is None else max_bytes
    entries: list[_Entry] = []
    total = 0
    for name, path in _walk(source):
        st = path.stat()
        total += st.st_size
        if total > limit:
            raise SpecError(
                f"source {str(source)!r} is over {_human(limit)}",
                hint="list data, checkpoints and build outputs in a .mlcloudignore file "
                "(gitignore syntax) and pass data through `inputs:`",
            )
        entries.append(_Entry(name, path, None, bool(st.st_mode & 0o111)))
    if include_runtime:
        clash = [e.name for e in entries if e.name.split("/", 1)[0] == RUNTIME_DIR]
        if clash:
            raise SpecError(
                f"source contains {clash[0]!r}; the {RUNTIME_DIR}/ directory is reserved",
                hint=f"rename it or add {RUNTIME_DIR}/ to .mlcloudignore",
            )
        entries.extend(_runtime_entries())
    return sorted(entries, key=lambda e: e.name)


def _content(entry: _Entry) -> bytes:
    if entry.data is not None:
        return entry.data
    assert entry.path is not None
    return entry.path.read_bytes()


def pack_source(
    source: Path, *, include_runtime: bool = True, max_bytes: int | None = None
) -> SourceArchive:
    """A gzip'd tar of ``source``, byte-identical for identical content.

    ``max_bytes`` (default :data:`MAX_SOURCE_BYTES`) bounds the unpacked size; callers packing
    something other than code (a model directory) may raise it.
    """
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for entry in collect(source, include_runtime=include_runtime, max_bytes=max_bytes):
            data = _content(entry)
            info = tarfile.TarInfo(entry.name)
            info.size = len(data)
            info.mtime = 0
            info.mode = 0o755 if entry.executable else 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.type = tarfile.REGTYPE
            tar.addfile(info, io.BytesIO(data))
        names = tuple(sorted(m.name for m in tar.getmembers()))
    gz = io.BytesIO()
    # filename="" and mtime=0 keep the gzip header free of anything machine- or time-specific.
    with gzip.GzipFile(filename="", mode="wb", fileobj=gz, mtime=0, compresslevel=6) as fh:
        fh.write(raw.getvalue())
    data = gz.getvalue()
    return SourceArchive(data=data, sha256=hashlib.sha256(data).hexdigest(), files=names)


def write_source_dir(
    source: Path, dest: Path, *, include_runtime: bool = True, max_bytes: int | None = None
) -> list[str]:
    """Copy the same file set as :func:`pack_source` into ``dest``; returns the names."""
    dest = Path(dest)
    names: list[str] = []
    for entry in collect(source, include_runtime=include_runtime, max_bytes=max_bytes):
        target = dest.joinpath(*entry.name.split("/"))
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(_content(entry))
        target.chmod(0o755 if entry.executable else 0o644)
        names.append(entry.name)
    return names


def code_key(prefix: str, archive: SourceArchive) -> str:
    """The content-addressed object key of ``archive`` under ``prefix`` (which may be empty)."""
    base = prefix.strip("/")
    key = f"code/{archive.sha256}.tar.gz"
    return f"{base}/{key}" if base else key


# ---- safe extraction ------------------------------------------------------------------------
def tree_digest(path: Path) -> tuple[str, tuple[tuple[str, str], ...]]:
    """sha256 over the relative names and contents of a file or directory tree (files streamed,
    symlinks skipped), and its files as (relative name, absolute path): the content address
    under which a local input is uploaded."""
    if path.is_file():
        entries = [(path.name, path)]
    elif path.is_dir():
        entries = sorted(
            (p.relative_to(path).as_posix(), p)
            for p in path.rglob("*")
            if p.is_file() and not p.is_symlink()
        )
    else:
        raise SpecError(f"input {path} does not exist")
    from mlcloud.modeldir import sha256_file

    outer = hashlib.sha256()
    for rel, p in entries:
        outer.update(f"{rel}\0{sha256_file(p)}\n".encode())
    return outer.hexdigest(), tuple((rel, str(p)) for rel, p in entries)


def _check_member(member: tarfile.TarInfo, root: Path) -> None:
    name = member.name
    pure = PurePosixPath(name)
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        raise ValueError(f"unsafe archive member {name!r}: absolute path")
    if ".." in pure.parts or ".." in name.split("\\"):
        raise ValueError(f"unsafe archive member {name!r}: '..' in path")
    if not (member.isreg() or member.isdir()):
        kind = "link" if (member.issym() or member.islnk()) else "special file"
        raise ValueError(f"unsafe archive member {name!r}: {kind}")
    # resolve() follows links already on disk, so a planted symlink in dest is caught too.
    target = (root / name).resolve()
    if target != root and root not in target.parents:
        raise ValueError(f"unsafe archive member {name!r}: resolves outside the destination")


def safe_extract(archive: bytes | Path, dest: Path) -> list[str]:
    """Extract regular files and directories only; refuse anything that could escape ``dest``.

    Every member is checked before anything is written. Returns the names of the files.
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()
    raw = archive if isinstance(archive, bytes) else Path(archive).read_bytes()
    written: list[str] = []
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:*") as tar:
        members = tar.getmembers()
        for member in members:
            _check_member(member, root)
        for member in members:
            target = root / member.name
            if member.isdir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            _check_member(member, root)  # again: an earlier member may have made a dir
            target.parent.mkdir(parents=True, exist_ok=True)
            source = tar.extractfile(member)
            assert source is not None
            with source, target.open("wb") as out:
                while block := source.read(1 << 20):
                    out.write(block)
            target.chmod(0o755 if member.mode & stat.S_IXUSR else 0o644)
            written.append(member.name)
    return written
