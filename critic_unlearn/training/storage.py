"""Run folders on shared storage: `runtime.run_dir` as an fsspec URL (s3://, gs://, file://, ...).

The run loop keeps writing a local folder (metrics.jsonl appends, TensorBoard events and plots
need a local filesystem). For a URL run_dir that folder is a staging copy, and `RunStore` keeps
the remote folder in step with it:

- `pull` at start makes the staging copy equal to the remote run (the remote is the truth), so a
  rerun on another node resumes from the remote checkpoint when the first node died; when the
  store has nothing yet, the staging folder is kept (an earlier attempt on this node that could
  not push) and pushed at the next checkpoint;
- `push` after every checkpoint and at the end uploads the files that changed since the last
  push (by size, mtime and inode, kept in the staging folder's `.pushed.json`, so the loop does
  not send again what the start's pull brought down), each as one whole object: an object
  store's PUT (a multipart upload too) becomes visible whole or not at all; on a filesystem
  (file://, sftp://, hdfs://) the file goes to a temporary name first and is renamed. The
  checkpoint goes last, after the snapshots and the metrics it refers to, so a remote checkpoint
  never points at a snapshot that is missing.

A push that fails during the run is logged and retried at the next checkpoint (a network blip
must not stop a day-long run); the final push raises, naming the staging folder that holds the
run. Uploads run in the loop's thread: for LoRA adapters and a CLIP-head critic they take
seconds.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from critic_unlearn.config import RunConfig, run_dir_url
from critic_unlearn.io_utils import atomic_write_text
from critic_unlearn.training.errors import RunFailure

log = logging.getLogger(__name__)
OBJECT_STORES = {"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss"}  # a PUT is atomic per object
LAST = "checkpoints/"  # pushed after everything else
_TMP = ".tmp-"  # temporary names (io_utils' and ours): never pushed, never pulled
PUSHED = ".pushed.json"  # in the staging folder: what the store has, by local stamp


class StorageError(RunFailure):
    """The remote run folder could not be read or written; says where the run's files are."""


def default_staging_dir() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "critic-unlearn" / "staging"


def staging_folder(cfg: RunConfig, name: str) -> Path:
    """The local copy of `run_dir/<name>`: staging_dir/<scheme>/<bucket or host>/<prefix>/<name>,
    so two URLs never share one folder."""
    scheme, rest = run_dir_url(cfg.runtime.run_dir) or ("", "")
    parts = [p for p in rest.split("/") if p and p not in (".", "..")]
    return Path(cfg.runtime.staging_dir or default_staging_dir()).joinpath(scheme, *parts, name)


def _filesystem(url: str, options: dict[str, Any]) -> tuple[Any, str]:
    import fsspec

    try:
        # a fresh instance: fsspec caches instances and their directory listings per options
        return fsspec.core.url_to_fs(url, skip_instance_cache=True, **options)
    except ImportError as e:  # s3fs / gcsfs / adlfs not installed
        raise StorageError(
            f"runtime.run_dir = {url!r} needs a package that is not installed ({e}); for s3:// "
            "install critic-unlearn[s3], for others the fsspec implementation named there"
        ) from None
    except (TypeError, ValueError) as e:
        raise StorageError(
            f"runtime.run_dir = {url!r}: runtime.storage_options = {options!r} were refused "
            f"({type(e).__name__}: {e}); see the fsspec implementation's options"
        ) from None


class RunStore:
    """One run's staging folder and its remote copy; a no-op for a local run_dir."""

    def __init__(self, local: Path, url: str | None, options: dict[str, Any] | None = None):
        self.local, self.url = Path(local), url
        self.fs: Any = None
        self.root, self.whole_objects = "", False
        if url is not None:
            self.fs, root = _filesystem(url, options or {})
            self.root = root.rstrip("/")
            protocols = self.fs.protocol
            protocols = {protocols} if isinstance(protocols, str) else set(protocols)
            self.whole_objects = bool(protocols & OBJECT_STORES)
        self.pushed = self._read_pushed() if url else {}  # relative path -> stamp when sent

    @classmethod
    def for_run(cls, cfg: RunConfig, run_dir: Path) -> RunStore:
        """The store of the run in `run_dir` (the staging folder for a URL run_dir)."""
        if run_dir_url(cfg.runtime.run_dir) is None:
            return cls(run_dir, None)
        url = f"{cfg.runtime.run_dir.rstrip('/')}/{Path(run_dir).name}"
        return cls(run_dir, url, cfg.runtime.storage_options)

    # -- remote -> staging --------------------------------------------------------------------
    def pull(self) -> list[str]:
        """Make the staging folder a copy of the remote run; keep it when the store has nothing
        of the run yet. Returns the relative paths downloaded."""
        if self.fs is None:
            return []
        try:
            remote = self._remote_files()
            if not remote:
                self.pushed = {}  # all of it goes up at the next push
            self._drop_local_extras(set(remote))
            for rel, path in sorted(remote.items()):
                dest = self.local / rel
                dest.parent.mkdir(parents=True, exist_ok=True)
                tmp = dest.with_name(f".{dest.name}{_TMP}{os.getpid()}")
                self.fs.get_file(path, str(tmp))
                os.replace(tmp, dest)
                self.pushed[rel] = self._stamp(rel)
        except Exception as e:  # any store's error (OSError, botocore's, ...)
            raise StorageError(
                f"could not read the run at {self.url} into {self.local} ({type(e).__name__}: "
                f"{e}); check runtime.run_dir, runtime.storage_options and the credentials"
            ) from e
        self._write_pushed()
        return sorted(remote)

    def _remote_files(self) -> dict[str, str]:
        self.fs.invalidate_cache()
        if not self.fs.exists(self.root):
            return {}
        out = {}
        for path in self.fs.find(self.root):
            rel = path[len(self.root) :].lstrip("/")
            if rel and _TMP not in rel:
                out[rel] = path
        return out

    def _drop_local_extras(self, keep: set[str]) -> None:
        """Files of an earlier attempt on this node that the remote run does not have. A local
        checkpoint stays when the remote has none (its push failed after the snapshots and
        metrics it refers to went up): it is the only one."""
        remote_has_checkpoint = any(r.startswith(LAST) for r in keep)
        for rel in self._local_files() if keep else []:
            if rel.startswith(LAST) and not remote_has_checkpoint:
                continue
            if rel not in keep:
                (self.local / rel).unlink()
                self.pushed.pop(rel, None)

    # -- staging -> remote --------------------------------------------------------------------
    def push(self, final: bool = False) -> list[str]:
        """Upload what changed since the last push, checkpoints last. Returns the relative paths
        sent. A failure is logged and retried at the next push, or raised when `final`."""
        if self.fs is None:
            return []
        changed = [r for r in self._local_files() if self.pushed.get(r) != self._stamp(r)]
        sent = []
        try:
            for rel in sorted(changed, key=lambda r: (r.startswith(LAST), r)):
                stamp = self._stamp(rel)
                self._put(rel)
                self.pushed[rel] = stamp
                sent.append(rel)
        except Exception as e:  # any store's error; the files stay unsent and are tried again
            msg = (
                f"could not store {rel} at {self.url} ({type(e).__name__}: {e}); the run is "
                f"whole in {self.local}"
            )
            if final:
                raise StorageError(
                    f"{msg}: copy it there, or rerun the same command (it resumes from the last "
                    "checkpoint the store holds and pushes again)"
                ) from e
            log.error("%s; retrying at the next checkpoint", msg)
        finally:
            if sent:
                self._write_pushed()
        return sent

    def _put(self, rel: str) -> None:
        src, dest = str(self.local / rel), f"{self.root}/{rel}"
        if self.whole_objects:
            self.fs.put_file(src, dest)
            return
        parent, name = dest.rsplit("/", 1)
        tmp = f"{parent}/.{name}{_TMP}{os.getpid()}"
        self.fs.makedirs(parent, exist_ok=True)
        self.fs.put_file(src, tmp)
        self.fs.mv(tmp, dest)

    # -- the staging folder -------------------------------------------------------------------
    def _local_files(self) -> list[str]:
        if not self.local.is_dir():
            return []
        return sorted(
            p.relative_to(self.local).as_posix()
            for p in self.local.rglob("*")
            if p.is_file() and _TMP not in p.name and p.name != PUSHED
        )

    def _read_pushed(self) -> dict[str, tuple[int, ...]]:
        try:
            data = json.loads((self.local / PUSHED).read_text())
            return {str(k): tuple(int(x) for x in v) for k, v in data.items()}
        except (OSError, ValueError, TypeError, AttributeError):  # none yet, or unreadable:
            return {}  # then everything is sent once more

    def _write_pushed(self) -> None:
        atomic_write_text(self.local / PUSHED, json.dumps(self.pushed))

    def _stamp(self, rel: str) -> tuple[int, ...]:
        """Changes when a file grows (appends) or is replaced (io_utils' rename: a new inode)."""
        st = (self.local / rel).stat()
        return st.st_size, st.st_mtime_ns, st.st_ino
