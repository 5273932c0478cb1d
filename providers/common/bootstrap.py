"""The container command that unpacks a job's code archive and hands over to the launcher.

``BOOTSTRAP_SRC`` travels inline in every plan (``python3 -c ...``), so it is short and
standard-library only. It applies the same checks as :func:`staging.safe_extract`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypedDict, Unpack

# argv: <archive file, or a directory holding exactly one *.tar.gz> <launcher args...>
BOOTSTRAP_SRC = """\
import os,sys,tarfile,tempfile
a=sys.argv[1]
if os.path.isdir(a):
 t=sorted(f for f in os.listdir(a) if f.endswith('.tar.gz'))
 if len(t)!=1:sys.exit('mlcloud: want one .tar.gz in %s, found %d'%(a,len(t)))
 a=os.path.join(a,t[0])
w=os.environ.get('MLCLOUD_WORKDIR') or tempfile.mkdtemp(prefix='mlcloud-')
os.makedirs(w,exist_ok=True)
r=os.path.realpath(w)
with tarfile.open(a) as f:
 ms=f.getmembers()
 for m in ms:
  n=m.name;p=os.path.realpath(os.path.join(r,n));ok=m.isreg() or m.isdir()
  if n[:1]=='/' or '..' in n.split('/') or not ok or not p.startswith(r+os.sep):
   sys.exit('mlcloud: unsafe archive member %r'%n)
 for m in ms:
  p=os.path.join(r,m.name)
  if m.isdir():os.makedirs(p,exist_ok=True);continue
  os.makedirs(os.path.dirname(p),exist_ok=True)
  with f.extractfile(m) as s,open(p,'wb') as o:o.write(s.read())
  os.chmod(p,0o755 if m.mode&64 else 0o644)
os.chdir(r)
os.execv(sys.executable,[sys.executable,'_mlcloud/launcher.py']+sys.argv[2:])
"""


class LauncherOptions(TypedDict, total=False):
    """The launcher's optional flags (``launcher.py --help``)."""

    nproc_per_node: int
    distributed: bool
    master_port: int | None
    inputs: Mapping[str, str] | None
    outputs: Mapping[str, str] | None


def launcher_args(
    *, platform: str, command: list[str], **options: Unpack[LauncherOptions]
) -> list[str]:
    """The launcher's own flags, ``--`` and the user command."""
    args = ["--platform", platform]
    nproc_per_node = options.get("nproc_per_node", 1)
    if nproc_per_node != 1:
        args += ["--nproc-per-node", str(nproc_per_node)]
    if options.get("distributed"):
        args.append("--distributed")
    master_port = options.get("master_port")
    if master_port is not None:
        args += ["--master-port", str(master_port)]
    for name, path in sorted((options.get("inputs") or {}).items()):
        args += ["--input", f"{name}={path}"]
    for name, path in sorted((options.get("outputs") or {}).items()):
        args += ["--output", f"{name}={path}"]
    return [*args, "--", *command]


def launcher_argv(
    *,
    platform: str,
    command: list[str],
    python: str = "python3",
    **options: Unpack[LauncherOptions],
) -> list[str]:
    """The command for code already unpacked in the working dir (Azure ML uploads a directory)."""
    return [
        python,
        "_mlcloud/launcher.py",
        *launcher_args(platform=platform, command=command, **options),
    ]


def bootstrap_argv(
    archive: str,
    *,
    platform: str,
    command: list[str],
    python: str = "python3",
    **options: Unpack[LauncherOptions],
) -> list[str]:
    """The container command: unpack ``archive`` (a local path in the container), then launch."""
    args = launcher_args(platform=platform, command=command, **options)
    return [python, "-c", BOOTSTRAP_SRC, archive, *args]
