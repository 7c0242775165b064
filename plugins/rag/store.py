"""The document index: Qdrant in local mode (embedded, on disk) through LangChain.

Local mode speaks the same API as a Qdrant server or cluster, which is the scale-out
path: point a `QdrantClient(url=...)` at one instead of `QdrantClient(path=...)`.

Local mode lets one client at a time open a folder (it holds a file lock), so a running
server and `tuneloop rag index` could not both use one folder. The index therefore
lives in versions under `rag_dir`:

    rag_dir/CURRENT           the name of the version to read (replaced atomically)
    rag_dir/index.json        what was indexed: folders, documents, chunks (lock-free to read)
    rag_dir/index-<stamp>/    a Qdrant local-mode folder

Indexing copies the current version, replaces the given folder's chunks in the copy,
then points CURRENT at it; readers notice on their next query and switch, closing the
old client once no query uses it. A failed run leaves CURRENT as it was. Old versions
are removed by a later run once no process holds them.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from plugins.rag.documents import load_folder, split
from plugins.rag.embedding import DIMENSIONS, embeddings

log = logging.getLogger(__name__)

COLLECTION = "documents"
# The embeddings are unit length, so the dot product is the cosine similarity. Asking for
# Cosine would make local mode re-normalise every stored vector on every query: 11 ms
# against 4 ms per search over 10,000 chunks, measured here. (A Qdrant server normalises
# once, at insert; Dot behaves the same there.)
DISTANCE = "Dot"
POINTER, MANIFEST, WRITER_LOCK, VERSION_PREFIX = "CURRENT", "index.json", ".writer.lock", "index-"
BATCH = 64  # chunks embedded and written per step of the progress bar
_IDS = uuid.UUID("6f6e1c1e-7a0b-4b8e-9d0e-2a1c3b4d5e6f")  # namespace of the chunks' point ids


class IndexBusy(RuntimeError):
    """Another `tuneloop rag index` is writing to the same index folder."""


@dataclass(frozen=True)
class Chunk:
    """A retrieved piece of a document. `score` is the cosine similarity to the query (-1..1)."""

    text: str
    source: str
    title: str
    score: float
    page: int | None = None

    def citation(self) -> dict[str, Any]:
        """What a response's trace keeps of it: where it came from and how close it was."""
        return {"source": self.source, "title": self.title, "page": self.page, "score": round(self.score, 4)}


@dataclass
class IndexResult:
    folder: str
    documents: int
    chunks: int
    skipped: list[tuple[str, str]] = field(default_factory=list)
    total_chunks: int = 0  # in the whole index, every folder together
    version: str = ""


# ------------------------------------------------------------------ writing


def index(folder: str | Path, rag_dir: str | Path, progress: bool = True) -> IndexResult:
    """Load, split and embed `folder` into the index at `rag_dir`, replacing what an
    earlier run stored for the same folder (by its absolute path)."""
    folder_key = str(Path(folder).resolve())
    loaded = load_folder(folder)
    return index_chunks(split(loaded.documents), folder_key, rag_dir, progress=progress,
                        documents=len(loaded.documents), skipped=loaded.skipped)


def index_chunks(chunks: list, folder_key: str, rag_dir: str | Path, progress: bool = True,
                 documents: int | None = None, skipped: list[tuple[str, str]] | None = None) -> IndexResult:
    """Store ready-made chunks (LangChain `Document`s with source, title and page) under
    `folder_key`, replacing that key's earlier chunks; what `index` does after splitting."""
    from qdrant_client import QdrantClient
    from tqdm.auto import tqdm

    skipped = skipped or []
    documents = len({chunk.metadata.get("source") for chunk in chunks}) if documents is None else documents
    for number, chunk in enumerate(chunks):
        chunk.metadata["folder"] = folder_key
        chunk.metadata.setdefault("chunk", number)
    rag_dir = Path(rag_dir)
    rag_dir.mkdir(parents=True, exist_ok=True)
    with _writer(rag_dir):
        old = current_version(rag_dir)
        new = rag_dir / f"{VERSION_PREFIX}{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}"
        try:
            if old is not None:
                shutil.copytree(old, new, ignore=shutil.ignore_patterns(".lock"))
            client = QdrantClient(path=str(new))
            try:
                vectors = _prepared(client, folder_key)
                with tqdm(total=len(chunks), unit="chunk", desc="embedding", disable=not progress) as bar:
                    for start in range(0, len(chunks), BATCH):
                        batch = chunks[start:start + BATCH]
                        vectors.add_documents(batch, ids=[_point_id(chunk.metadata) for chunk in batch])
                        bar.update(len(batch))
                total = client.count(COLLECTION, exact=True).count
            finally:
                client.close()
        except BaseException:
            shutil.rmtree(new, ignore_errors=True)  # nothing half-written: CURRENT still names the old one
            raise
        entry = {"documents": documents, "chunks": len(chunks), "skipped": len(skipped),
                 "indexed_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        _publish(rag_dir, new, folder_key, entry, total)
        _prune(rag_dir, keep=new)
    return IndexResult(folder_key, documents, len(chunks), skipped, total, new.name)


def _prepared(client, folder_key: str):  # noqa: ANN001 -> QdrantVectorStore
    """The collection (created on first use) without `folder_key`'s earlier chunks."""
    from langchain_qdrant import QdrantVectorStore
    from qdrant_client import models

    if not client.collection_exists(COLLECTION):
        client.create_collection(COLLECTION, vectors_config=models.VectorParams(size=DIMENSIONS, distance=DISTANCE))
    client.delete(COLLECTION, points_selector=models.FilterSelector(filter=models.Filter(must=[
        models.FieldCondition(key="metadata.folder", match=models.MatchValue(value=folder_key))])))
    return QdrantVectorStore(client, COLLECTION, embedding=embeddings(), distance=DISTANCE,
                             validate_collection_config=False)


def _point_id(metadata: dict) -> str:
    """Stable per folder, file, page and chunk number."""
    name = "\x00".join(str(metadata.get(key)) for key in ("folder", "source", "page", "chunk"))
    return str(uuid.uuid5(_IDS, name))


@contextmanager
def _writer(rag_dir: Path) -> Iterator[None]:
    import portalocker

    with open(rag_dir / WRITER_LOCK, "a") as handle:
        try:
            portalocker.lock(handle, portalocker.LockFlags.EXCLUSIVE | portalocker.LockFlags.NON_BLOCKING)
        except portalocker.exceptions.LockException as error:
            message = f"another `tuneloop rag index` is writing to {rag_dir}; try again when it is done"
            raise IndexBusy(message) from error
        try:
            yield
        finally:
            portalocker.unlock(handle)


def _publish(rag_dir: Path, version: Path, folder_key: str, entry: dict, total: int) -> None:
    manifest = info(rag_dir) or {"folders": {}}
    manifest["folders"][folder_key] = entry
    if not entry["chunks"]:
        manifest["folders"].pop(folder_key)
    manifest.update(version=version.name, chunks=total, collection=COLLECTION)
    _replace(rag_dir / MANIFEST, json.dumps(manifest, indent=2))
    _replace(rag_dir / POINTER, version.name)  # the switch: readers follow this file


def _replace(path: Path, text: str) -> None:
    partial = path.with_name(f".{path.name}.{uuid.uuid4().hex[:6]}")
    partial.write_text(text)
    os.replace(partial, path)


def _prune(rag_dir: Path, keep: Path) -> None:
    """Remove versions no client holds (a server still reading one keeps it until a later run)."""
    import portalocker

    for version in rag_dir.glob(f"{VERSION_PREFIX}*"):
        if version == keep or not version.is_dir():
            continue
        lock = version / ".lock"
        if not lock.exists():
            shutil.rmtree(version, ignore_errors=True)
            continue
        with open(lock, "r+") as handle:
            try:
                portalocker.lock(handle, portalocker.LockFlags.EXCLUSIVE | portalocker.LockFlags.NON_BLOCKING)
            except portalocker.exceptions.LockException:
                continue  # open in a server
            shutil.rmtree(version, ignore_errors=True)  # while locked: nobody opens it meanwhile


# ------------------------------------------------------------------ reading


def current_version(rag_dir: str | Path) -> Path | None:
    """The version folder readers use now, or None when nothing was indexed yet."""
    try:
        name = (Path(rag_dir) / POINTER).read_text().strip()
    except FileNotFoundError:
        return None
    path = Path(rag_dir) / name
    return path if name and path.is_dir() else None


def has_index(rag_dir: str | Path) -> bool:
    return current_version(rag_dir) is not None


def info(rag_dir: str | Path) -> dict | None:
    """The manifest: version, total chunks, and per indexed folder its documents and chunks."""
    try:
        return json.loads((Path(rag_dir) / MANIFEST).read_text())
    except FileNotFoundError:
        return None


def retrieve(query: str, k: int, rag_dir: str | Path) -> list[Chunk]:
    """The `k` chunks closest to `query` in the index at `rag_dir`, best first; empty when there is none."""
    with _reading(Path(rag_dir)) as reader:
        if reader is None:
            return []
        with _one_blas_thread:
            found = reader.vectors.similarity_search_with_score(query, k=k)
    return [Chunk(text=document.page_content, source=document.metadata.get("source", ""),
                  title=document.metadata.get("title") or "", score=float(score),
                  page=document.metadata.get("page")) for document, score in found]


class _Reader:
    """One open version: its client (the only one for that folder in this process)."""

    def __init__(self, path: Path) -> None:
        from langchain_qdrant import QdrantVectorStore
        from qdrant_client import QdrantClient

        self.path, self.users, self.retired = path, 0, False
        if not (path / "meta.json").is_file():  # removed since CURRENT was read: don't create an empty one
            raise RuntimeError(f"{path} is no longer there")
        self.client = QdrantClient(path=str(path), force_disable_check_same_thread=True)
        try:
            self.vectors = QdrantVectorStore(self.client, COLLECTION, embedding=embeddings(), distance=DISTANCE,
                                             validate_collection_config=False)
        except BaseException:
            self.client.close()
            raise

    def close(self) -> None:
        self.client.close()


class _OneBlasThread:
    """While any retrieval runs, numpy's OpenBLAS uses one thread.

    Local mode scores a query with a numpy product over every stored vector; OpenBLAS
    spreads it over its threads, which then spin-wait and starve torch's threads that
    embed the next query. On 2 cores that more than doubled retrieval time (p50 about
    60 ms against 25 ms over 10,000 chunks); the product itself takes about a millisecond
    either way. Counted, so that overlapping retrievals restore the setting once, at the end.
    """

    def __init__(self) -> None:
        self.lock, self.users, self.limiter, self.controller = threading.Lock(), 0, None, None

    def __enter__(self) -> None:
        with self.lock:
            if self.users == 0:
                if self.controller is None:
                    from threadpoolctl import ThreadpoolController  # comes with scikit-learn

                    self.controller = ThreadpoolController().select(internal_api="openblas")
                self.limiter = self.controller.limit(limits=1)
            self.users += 1

    def __exit__(self, *exc: object) -> None:
        with self.lock:
            self.users -= 1
            if self.users == 0 and self.limiter is not None:
                self.limiter.restore_original_limits()
                self.limiter = None


_one_blas_thread = _OneBlasThread()


_readers: dict[Path, _Reader] = {}  # rag_dir -> the version being read
_guard = threading.Lock()
_failed: dict[Path, float] = {}  # version -> when it could not be opened (no log line every turn)
RETRY_AFTER = 30.0


@contextmanager
def _reading(rag_dir: Path) -> Iterator[_Reader | None]:
    reader = _acquire(rag_dir)
    try:
        yield reader
    finally:
        if reader is not None:
            with _guard:
                reader.users -= 1
                if reader.retired and reader.users == 0:
                    reader.close()


def _acquire(rag_dir: Path) -> _Reader | None:
    version = current_version(rag_dir)
    key = rag_dir.resolve()
    with _guard:
        reader = _readers.get(key)
        if reader is not None and reader.path != version:
            _retire(_readers.pop(key))
            reader = None
        if reader is None and version is not None:
            if time.monotonic() - _failed.get(version, -RETRY_AFTER) < RETRY_AFTER:
                return None
            try:
                reader = _readers[key] = _Reader(version)
            except RuntimeError as error:  # local mode's lock: another process has this folder open
                _failed[version] = time.monotonic()
                log.warning("rag: cannot open the index %s: %s", version, error)
                return None
        if reader is not None:
            reader.users += 1
        return reader


def _retire(reader: _Reader) -> None:
    reader.retired = True
    if reader.users == 0:
        reader.close()


def close(rag_dir: str | Path | None = None) -> None:
    """Close this process's clients (of one index, or all): at exit, or before removing a folder."""
    with _guard:
        keys = list(_readers) if rag_dir is None else [Path(rag_dir).resolve()]
        for key in keys:
            if key in _readers:
                _retire(_readers.pop(key))


atexit.register(close)
