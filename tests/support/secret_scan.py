"""A scanner for leaked secrets: `find_secrets(paths, secrets, texts=...)` -> a list of `Finding`.

What it looks for: each secret as-is, URL-encoded (`quote` and `quote_plus`), JSON-escaped (with and without
`\\/`), and base64-encoded
(standard and URL-safe alphabets, at each of the three byte alignments, so the secret is found inside a longer
base64 text too, e.g. `Basic base64(client_id:secret)`).

Where it looks:
- every file under the given paths (recursively), as raw bytes, whatever the file is: text, HTML, JSON, CSV,
  logs, SQLite, binaries;
- inside what a byte scan cannot read, because it is compressed or encoded: DuckDB files (every table and
  view column of every schema, cast to text, read through a read-only connection), Parquet files (every cell
  and the key-value metadata), gzip files and zip archives (their members);
- captured text (logs, command output) given as `texts={"name": text}`.

A finding names the place (file, table.column, log), the secret by its label (never its value) and the
encoding. A file that claims a format but cannot be decoded (a DuckDB file that will not open) raises
`ScanError`: a scan that silently skips a file would pass for a clean one. Secrets shorter than 6 characters
are refused (`ValueError`): they would match ordinary text.

    findings = find_secrets([data_dir], {"GHL token": token, "TinyEmail key": key}, texts={"log": caplog.text})
    assert findings == []
"""

from __future__ import annotations

import base64
import gzip
import io
import json
import zipfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, quote_plus

MIN_SECRET_LEN = 6
DUCKDB_MAGIC = (8, b"DUCK")  # the header of a DuckDB database file: 8 bytes of checksum, then "DUCK"
PARQUET_MAGIC = b"PAR1"
GZIP_MAGIC = b"\x1f\x8b"
ZIP_MAGIC = b"PK\x03\x04"


class ScanError(Exception):
    """A file that could not be decoded, so it could not be scanned."""


@dataclass(frozen=True)
class Finding:
    where: str  # a file path, `path::table.column`, `path::member` or the name of a text
    secret: str  # the secret's label, never its value
    encoding: str  # "as-is", "url", "url-plus", "json", "base64", "base64url"

    def __str__(self) -> str:
        return f"{self.secret} ({self.encoding}) in {self.where}"


# --------------------------------------------------------------------------------------------- needles


def encodings(secret: str) -> dict[str, list[bytes]]:
    """The byte strings that betray `secret`, per encoding (only the encodings that differ from as-is)."""
    raw = secret.encode("utf-8")
    escaped = json.dumps(secret)[1:-1]
    out: dict[str, list[bytes]] = {"as-is": [raw]}
    for name, variants in (("url", [quote(secret, safe="")]), ("url-plus", [quote_plus(secret)]),
                           ("json", [escaped, escaped.replace("/", "\\/")])):  # some encoders escape "/" too
        found = list(dict.fromkeys(v.encode() for v in variants if v != secret))
        if found:
            out[name] = found
    out["base64"] = _base64_fragments(raw, base64.b64encode)
    out["base64url"] = [f for f in _base64_fragments(raw, base64.urlsafe_b64encode) if f not in out["base64"]]
    return {name: needles for name, needles in out.items() if needles}


def _base64_fragments(raw: bytes, encode: object) -> list[bytes]:
    """For each alignment (0-2 bytes before the secret), the base64 characters that depend on the secret alone."""
    fragments = []
    for shift in range(3):
        text = encode(b"\0" * shift + raw).rstrip(b"=")  # type: ignore[operator]
        start = -(-shift * 8 // 6)  # the first character made of the secret's bits only
        end = (shift + len(raw)) * 8 // 6  # after the last whole character of them
        fragments.append(text[start:end])
    return list(dict.fromkeys(f for f in fragments if len(f) >= MIN_SECRET_LEN))


def _needles(secrets: Mapping[str, str] | Iterable[str]) -> list[tuple[str, str, bytes]]:
    labelled = secrets.items() if isinstance(secrets, Mapping) else ((f"secret #{i + 1}", s)
                                                                      for i, s in enumerate(secrets))
    needles = []
    for label, secret in labelled:
        if not isinstance(secret, str) or len(secret) < MIN_SECRET_LEN:
            raise ValueError(f"{label}: a secret to scan for must be a string of at least {MIN_SECRET_LEN} characters")
        needles += [(label, name, needle) for name, found in encodings(secret).items() for needle in found]
    return needles


# --------------------------------------------------------------------------------------------- scanning


def find_secrets(paths: Iterable[str | Path], secrets: Mapping[str, str] | Iterable[str], *,
                 texts: Mapping[str, str] | None = None) -> list[Finding]:
    """Every place where a secret (in any of its encodings) appears: files under `paths` and `texts`.

    Args:
        paths: files or directories (walked recursively); a missing path raises `ScanError`.
        secrets: {label: value}, or values (labelled "secret #1"...); each at least 6 characters.
        texts: captured text by name (log records, stdout), scanned like files.
    """
    needles = _needles(secrets)
    findings: list[Finding] = []
    for name, text in (texts or {}).items():
        findings += _search(text.encode("utf-8", "surrogatepass"), needles, name)
    for file in _files(paths):
        for where, blob in _contents(file):
            findings += _search(blob, needles, where)
    return list(dict.fromkeys(findings))


def _search(blob: bytes, needles: list[tuple[str, str, bytes]], where: str) -> list[Finding]:
    return [Finding(where, label, encoding) for label, encoding, needle in needles if needle in blob]


def _files(paths: Iterable[str | Path]) -> Iterator[Path]:
    for path in map(Path, paths):
        if path.is_file():
            yield path
        elif path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.is_file())
        else:
            raise ScanError(f"{path}: no such file or directory to scan")


def _contents(path: Path) -> Iterator[tuple[str, bytes]]:
    """The file's raw bytes, plus what it holds in decoded form when it is a DuckDB, Parquet, gzip or zip file."""
    data = path.read_bytes()
    yield str(path), data
    offset, magic = DUCKDB_MAGIC
    if data[offset:offset + len(magic)] == magic:
        yield from _duckdb_cells(path)
    elif data[:4] == PARQUET_MAGIC and data[-4:] == PARQUET_MAGIC:
        yield from _parquet_cells(path)
    elif data[:2] == GZIP_MAGIC:
        yield f"{path}::gunzip", _gunzip(path, data)
    elif data[:4] == ZIP_MAGIC:
        yield from _zip_members(path, data)


def _duckdb_cells(path: Path) -> Iterator[tuple[str, bytes]]:
    import duckdb

    try:
        con = duckdb.connect(str(path), read_only=True)
    except duckdb.Error as exc:
        raise ScanError(f"{path}: a DuckDB file that cannot be opened read-only (still open elsewhere?): "
                        f"{exc}") from exc
    try:
        tables = con.execute("SELECT DISTINCT table_catalog, table_schema, table_name FROM information_schema.tables "
                             "WHERE table_schema NOT IN ('information_schema', 'pg_catalog')").fetchall()
        for catalog, schema, table in tables:
            name = f'"{catalog}"."{schema}"."{table}"'
            rows = con.execute(f"SELECT CAST(COLUMNS(*) AS VARCHAR) FROM {name}").fetchall()
            columns = [d[0] for d in con.description or []]
            for index, column in enumerate(columns):
                cells = "\x1f".join(row[index] for row in rows if row[index] is not None)
                yield f"{path}::{schema}.{table}.{column}", cells.encode("utf-8", "surrogatepass")
    finally:
        con.close()


def _parquet_cells(path: Path) -> Iterator[tuple[str, bytes]]:
    import duckdb
    import pyarrow.parquet as pq

    try:
        metadata = pq.read_schema(path).metadata or {}
        with duckdb.connect() as con:
            rows = con.execute("SELECT CAST(COLUMNS(*) AS VARCHAR) FROM read_parquet(?)", [str(path)]).fetchall()
            columns = [d[0] for d in con.description or []]
    except Exception as exc:  # noqa: BLE001  # any failure to decode is a file we could not scan
        raise ScanError(f"{path}: a Parquet file that cannot be read: {exc}") from exc
    yield f"{path}::metadata", b"\x1f".join(k + b"=" + v for k, v in metadata.items())
    for index, column in enumerate(columns):
        cells = "\x1f".join(row[index] for row in rows if row[index] is not None)
        yield f"{path}::{column}", cells.encode("utf-8", "surrogatepass")


def _gunzip(path: Path, data: bytes) -> bytes:
    try:
        return gzip.decompress(data)
    except (OSError, EOFError) as exc:
        raise ScanError(f"{path}: a gzip file that cannot be decompressed: {exc}") from exc


def _zip_members(path: Path, data: bytes) -> Iterator[tuple[str, bytes]]:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            for member in archive.namelist():
                yield f"{path}::{member}", archive.read(member)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ScanError(f"{path}: a zip archive that cannot be read: {exc}") from exc
