"""Safetensors files written and read a block of rows at a time, never whole.

The vision cache of a paper-scale dataset is tens of GB, more than a job's RAM. It is therefore
written as it is computed (the header first, since every shape is known from the image count and
the first batch, then each batch at its offset) and read by rows with `os.preadv`, so that neither
side holds more than one batch. The files are ordinary safetensors files: `safetensors.safe_open`
reads them too.

Reads go through the page cache, which processes on one machine (the ranks of a multi-GPU fine-tune)
share; the resident set of each process holds only the rows it asked for.
"""
from __future__ import annotations

import contextlib
import errno
import json
import math
import numbers
import os
import struct
from collections.abc import Iterator
from pathlib import Path

import torch

from projection_probe.io import InputError, atomic_path

DTYPES = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32, "F64": torch.float64,
          "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
# The safetensors library refuses larger headers; a larger length field means a damaged file.
MAX_HEADER_BYTES = 100_000_000
# Header lengths are padded to a multiple of 8 so that the data starts aligned.
HEADER_ALIGN = 8


def _damaged(path: Path, why: str) -> InputError:
    return InputError(f"{path}: unreadable or truncated safetensors file ({why}); delete it and rerun")


def read_header(path: str | os.PathLike) -> tuple[dict[str, dict], dict[str, str], int]:
    """(tensors, metadata, data_start): each tensor's dtype, shape and absolute byte range, checked
    against the file's size before anything is read, so that a truncated or half-written file is
    refused rather than read as garbage."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: file not found")
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise _damaged(path, f"{size} bytes, shorter than the 8-byte header length")
        (header_len,) = struct.unpack("<Q", head)
        if header_len > MAX_HEADER_BYTES or 8 + header_len > size:
            raise _damaged(path, f"header of {header_len} bytes in a file of {size} bytes")
        raw = f.read(header_len)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _damaged(path, f"header is not JSON: {e}") from e
    if not isinstance(header, dict) or not all(isinstance(v, dict) for v in header.values()):
        raise _damaged(path, "header is not a JSON object of tensor entries")
    metadata = header.pop("__metadata__", None) or {}
    data_start = 8 + header_len
    try:
        entries = sorted(header.items(), key=lambda kv: [int(o) for o in kv[1]["data_offsets"]])
    except (KeyError, TypeError, ValueError) as e:
        raise _damaged(path, f"a tensor entry has no valid data_offsets ({e})") from e
    tensors, expected_begin = {}, 0
    for name, entry in entries:
        try:
            dtype, shape, (begin, end) = DTYPES[entry["dtype"]], [int(d) for d in entry["shape"]], entry["data_offsets"]
        except (KeyError, TypeError, ValueError) as e:
            raise _damaged(path, f"tensor {name!r} has a malformed or unsupported entry {entry}") from e
        nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
        if begin != expected_begin or end - begin != nbytes:
            raise _damaged(path, f"tensor {name!r} of shape {shape} has data_offsets {[begin, end]}")
        expected_begin = end
        tensors[name] = {"dtype": dtype, "shape": shape, "offset": data_start + begin, "nbytes": nbytes}
    if data_start + expected_begin != size:
        raise _damaged(path, f"the header describes {data_start + expected_begin} bytes but the file has {size}")
    return tensors, metadata, data_start


class RowReader:
    """One tensor of a safetensors file, read by rows (its first dimension) on demand.

    Indexing with an int returns one row; with a slice, a list or a 1-D index tensor it returns the
    rows stacked in that order. Runs of consecutive rows are read with one system call. The file
    handle is opened per process, so a reader can be passed to DataLoader workers or other ranks."""

    def __init__(self, path: str | os.PathLike, name: str, dtype: torch.dtype, shape: list[int], offset: int):
        self.path, self.name, self.dtype = Path(path), name, dtype
        self.shape = torch.Size(shape)
        self.offset = offset
        self.row_bytes = math.prod(shape[1:]) * torch.empty((), dtype=dtype).element_size()
        self._fd, self._pid = None, None

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"RowReader({str(self.path)!r}, {self.name!r}, {self.dtype}, {tuple(self.shape)})"

    def _file(self) -> int:
        if self._fd is None or self._pid != os.getpid():
            self._fd, self._pid = os.open(self.path, os.O_RDONLY), os.getpid()
        return self._fd

    def __getstate__(self):
        return {**self.__dict__, "_fd": None, "_pid": None}

    def __del__(self):
        with contextlib.suppress(Exception):  # also at interpreter exit, when `os` may be gone
            if self._fd is not None and self._pid == os.getpid():
                os.close(self._fd)

    def __getitem__(self, index) -> torch.Tensor:
        n = self.shape[0]
        if isinstance(index, slice):
            rows = list(range(n))[index]
        elif isinstance(index, numbers.Integral) or isinstance(index, torch.Tensor) and index.dim() == 0:
            return self.read([int(index)])[0]
        else:
            rows = [int(i) for i in (index.tolist() if hasattr(index, "tolist") else index)]
        return self.read(rows)

    def read(self, rows: list[int]) -> torch.Tensor:
        n = self.shape[0]
        rows = [r + n if r < 0 else r for r in rows]
        bad = [r for r in rows if not 0 <= r < n]
        if bad:
            raise IndexError(f"{self.path}: row {bad[0]} of {self.name} is out of range (it has {n} rows)")
        out = torch.empty((len(rows), *self.shape[1:]), dtype=self.dtype)
        if not rows or not self.row_bytes:
            return out
        buffer = memoryview(out.view(-1).view(torch.uint8).numpy())
        fd, start = self._file(), 0
        while start < len(rows):
            stop = start + 1
            while stop < len(rows) and rows[stop] == rows[stop - 1] + 1:
                stop += 1
            want = (stop - start) * self.row_bytes
            got = os.preadv(fd, [buffer[start * self.row_bytes:stop * self.row_bytes]],
                            self.offset + rows[start] * self.row_bytes)
            if got != want:
                raise _damaged(self.path, f"rows {rows[start]}..{rows[stop - 1]} of {self.name}: read {got} of "
                                          f"{want} bytes; the file changed while it was read")
            start = stop
        return out


def open_rows(path: str | os.PathLike) -> tuple[dict[str, RowReader], dict[str, str]]:
    """A RowReader per tensor of the file, and its metadata. Nothing but the header is read."""
    tensors, metadata, _ = read_header(path)
    return ({name: RowReader(path, name, t["dtype"], t["shape"], t["offset"]) for name, t in tensors.items()},
            metadata)


class RowWriter:
    """Appends rows to tensors that share their first dimension; see `write_rows`."""

    def __init__(self, fd: int, path: Path, layout: dict[str, dict]):
        self._fd, self._path, self._layout = fd, path, layout
        self.rows_written = 0
        self.num_rows = next(iter(layout.values()))["shape"][0]

    def append(self, blocks: dict[str, torch.Tensor]) -> None:
        """Write the next rows of every tensor (all with the same row count)."""
        if set(blocks) != set(self._layout):
            raise ValueError(f"append needs exactly the tensors {sorted(self._layout)}, got {sorted(blocks)}")
        counts = {len(t) for t in blocks.values()}
        if len(counts) != 1:
            raise ValueError(f"every tensor needs the same number of new rows, got {counts}")
        count = counts.pop()
        if self.rows_written + count > self.num_rows:
            raise ValueError(f"{self._path}: {self.rows_written + count} rows written, more than the declared "
                             f"{self.num_rows}")
        for name, block in blocks.items():
            spec = self._layout[name]
            if block.dtype != spec["dtype"] or list(block.shape[1:]) != spec["shape"][1:]:
                raise ValueError(f"{name}: rows of {block.dtype} {list(block.shape[1:])}, declared "
                                 f"{spec['dtype']} {spec['shape'][1:]}")
            data = block.detach().to("cpu").contiguous().view(-1).view(torch.uint8).numpy()
            position = spec["offset"] + self.rows_written * spec["row_bytes"]
            view = memoryview(data)
            while view:  # pwrite may write less than asked
                written = os.pwrite(self._fd, view, position)
                view, position = view[written:], position + written
        self.rows_written += count


@contextlib.contextmanager
def write_rows(path: str | os.PathLike, tensors: dict[str, tuple[torch.dtype, list[int]]],
               metadata: dict[str, str] | None = None) -> Iterator[RowWriter]:
    """Yield a writer whose `append` fills `tensors` (name: (dtype, shape); all share shape[0]) in
    row order. The header is written first; the file appears at `path` only when every row has been
    written and the block exits without error (atomically, like every other output)."""
    path = Path(path)
    counts = {shape[0] for _, shape in tensors.values()}
    if len(counts) != 1:
        raise ValueError(f"the tensors of a row file must share their first dimension, got {counts}")
    header, layout, begin = {}, {}, 0
    for name, (dtype, shape) in tensors.items():
        row_bytes = math.prod(shape[1:]) * torch.empty((), dtype=dtype).element_size()
        end = begin + shape[0] * row_bytes
        header[name] = {"dtype": DTYPE_NAMES[dtype], "shape": list(shape), "data_offsets": [begin, end]}
        layout[name] = {"dtype": dtype, "shape": list(shape), "row_bytes": row_bytes, "offset": begin}
        begin = end
    if metadata:
        header["__metadata__"] = {k: str(v) for k, v in metadata.items()}
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-(8 + len(raw)) % HEADER_ALIGN)
    data_start = 8 + len(raw)
    for spec in layout.values():
        spec["offset"] += data_start
    with atomic_path(path, suffix=".safetensors") as tmp:
        fd = os.open(tmp, os.O_WRONLY)
        try:
            try:  # claim the disk up front: a full disk fails now, not after hours of encoding
                os.posix_fallocate(fd, 0, data_start + begin)
            except OSError as e:
                if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL):  # unsupported by the file system
                    raise OSError(e.errno, f"{path}: cannot reserve {(data_start + begin) / 1e9:.2f} GB "
                                           f"({e.strerror})") from e
                os.ftruncate(fd, data_start + begin)
            os.pwrite(fd, struct.pack("<Q", len(raw)) + raw, 0)
            writer = RowWriter(fd, path, layout)
            yield writer
            if writer.rows_written != writer.num_rows:
                raise ValueError(f"{path}: only {writer.rows_written} of {writer.num_rows} rows were written")
            os.fsync(fd)
        finally:
            os.close(fd)
