"""The X_v cache is written batch by batch and read by rows: the same tensors as a whole-file
safetensors round trip, and a damaged file is refused by name before any row is read."""
from __future__ import annotations

import json
import pickle
import struct

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from projection_probe.features.cache import load_vision_cache, write_vision_cache
from projection_probe.io import InputError

N, PATCHES, WIDTH, POOLED = 11, 3, 5, 4


def batches(x_v, pooled, size):
    for start in range(0, len(x_v), size):
        yield x_v[start:start + size], pooled[start:start + size]


def features(seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(N, PATCHES, WIDTH, generator=g, dtype=dtype), torch.randn(N, POOLED, generator=g, dtype=dtype)


@pytest.fixture
def written(tmp_path):
    x_v, pooled = features()
    paths = [f"images/{i}.png" for i in range(N)]
    out = tmp_path / "vision.safetensors"
    write_vision_cache(out, paths, batches(x_v, pooled, 4), "pad")  # 4 + 4 + 3 rows
    return out, x_v.half(), pooled.half(), paths


def test_streamed_file_is_an_ordinary_safetensors_file(written):
    out, x_v, pooled, paths = written
    tensors = load_file(str(out))
    assert torch.equal(tensors["x_v"], x_v) and torch.equal(tensors["pooled"], pooled)
    with safe_open(str(out), framework="pt") as f:
        meta = f.metadata()
    assert json.loads(meta["image_paths"]) == paths and meta["image_preprocessing"] == "pad"
    assert [p.name for p in out.parent.iterdir()] == [out.name]  # no temporary file left beside it


def test_rows_read_on_demand_equal_the_tensors(written):
    out, x_v, pooled, paths = written
    cache = load_vision_cache(out)
    assert cache.x_v.shape == x_v.shape and len(cache.pooled) == N and cache.image_preprocessing == "pad"
    assert torch.equal(cache.x_v[4], x_v[4]) and torch.equal(cache.x_v[torch.tensor(-1)], x_v[-1])
    assert torch.equal(cache.x_v[2:9:3], x_v[2:9:3]) and torch.equal(cache.x_v[:], x_v)
    order = [7, 8, 9, 0, 3, 3, 10]  # a run, a jump back, a repeat
    assert torch.equal(cache.x_v[torch.tensor(order)], x_v[order]) and torch.equal(cache.pooled[order], pooled[order])
    assert torch.equal(cache.select([paths[5], paths[1]]), x_v[[5, 1]])
    assert cache.x_v[[]].shape == (0, PATCHES, WIDTH)
    with pytest.raises(IndexError, match="out of range"):
        cache.x_v[[N]]
    # Another process (DataLoader worker, training rank) gets the reader, not the tensor, and opens its own handle.
    clone = pickle.loads(pickle.dumps(cache.x_v))
    assert torch.equal(clone[[6, 2]], x_v[[6, 2]])


def test_dataloader_workers_read_their_own_rows(written):
    """A forked worker (like each rank of a multi-GPU fine-tune) opens the same file itself."""
    from torch.utils.data import DataLoader

    from projection_probe.features.cache import load_vision_cache
    from projection_probe.train.data import CachedFeatureDataset, TrainExample

    out, x_v, _, paths = written
    cache = load_vision_cache(out)
    cache.x_v[0]  # the parent's handle is open before the fork
    dataset = CachedFeatureDataset([TrainExample("<image>", str(i), p, "x") for i, p in enumerate(paths)], cache)
    loader = DataLoader(dataset, batch_size=4, num_workers=1, multiprocessing_context="fork",
                        collate_fn=lambda f: torch.stack([e["x_v"] for e in f]))
    assert torch.equal(torch.cat(list(loader)), x_v)


def test_files_written_whole_by_safetensors_are_read_the_same(tmp_path):
    x_v, pooled = features(1, torch.bfloat16)
    out = tmp_path / "vision.safetensors"
    save_file({"x_v": x_v, "pooled": pooled}, str(out),
              metadata={"image_paths": json.dumps([str(i) for i in range(N)])})
    cache = load_vision_cache(out)
    assert cache.x_v.dtype == torch.bfloat16 and cache.image_preprocessing is None
    assert torch.equal(cache.x_v[[3, 4, 1]], x_v[[3, 4, 1]]) and torch.equal(cache.pooled[:], pooled)


@pytest.mark.parametrize("keep", [0, 5, 12, "header", "data", "one byte"])
def test_truncated_cache_is_refused_naming_it(written, keep):
    out, *_ = written
    data = out.read_bytes()
    header_end = 8 + struct.unpack("<Q", data[:8])[0]
    cut = {"header": header_end - 10, "data": header_end + 40, "one byte": len(data) - 1}.get(keep, keep)
    out.write_bytes(data[:cut])
    with pytest.raises(InputError, match="truncated") as e:
        load_vision_cache(out)
    assert str(out) in str(e.value)


def test_cache_with_trailing_bytes_or_inconsistent_offsets_is_refused(written, tmp_path):
    out, *_ = written
    longer = tmp_path / "longer.safetensors"
    longer.write_bytes(out.read_bytes() + b"\0" * 8)
    with pytest.raises(InputError, match="describes") as e:
        load_vision_cache(longer)
    assert str(longer) in str(e.value)
    data = out.read_bytes()
    header_len = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + header_len])
    header["x_v"]["shape"][0] += 1  # rows the data region does not hold
    raw = json.dumps(header, separators=(",", ":")).encode().ljust(header_len)
    lying = tmp_path / "lying.safetensors"
    lying.write_bytes(data[:8] + raw + data[8 + header_len:])
    with pytest.raises(InputError, match="data_offsets") as e:
        load_vision_cache(lying)
    assert str(lying) in str(e.value)


def test_a_failed_or_short_build_leaves_no_file(tmp_path):
    x_v, pooled = features()
    paths = [str(i) for i in range(N)]
    out = tmp_path / "vision.safetensors"

    def failing():
        yield x_v[:4], pooled[:4]
        raise RuntimeError("the vision tower failed")

    with pytest.raises(RuntimeError, match="vision tower failed"):
        write_vision_cache(out, paths, failing(), "pad")
    with pytest.raises(ValueError, match="only 8 of 11 rows"):
        write_vision_cache(out, paths, batches(x_v[:8], pooled[:8], 4), "pad")
    with pytest.raises(InputError, match="no images"):
        write_vision_cache(out, [], iter(()), "pad")
    assert list(tmp_path.iterdir()) == []

