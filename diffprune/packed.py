"""The tensors of a version-3 diff file: every kept entry of the model as one Elias-Fano coded
set of global positions, one values vector, and the layout that maps global positions back
to (tensor, flat position).

Global position = the tensor's offset in the layout (diffed tensors in the model's parameter
order, each ``numel`` long) + the flat position inside it. Sorting by it sorts by tensor and
then by position, so the values vector is in the same order as the decoded positions.

Version 2 stored one int32 positions tensor and one values tensor per diffed tensor: 8 bytes
of positions per kept entry (3.5x their information limit at 0.5%) and a safetensors header
entry per tensor (about 28 KB for a 6-layer BERT); version 3 spends ~1.05x the limit on the
positions and four tensor entries in all.
"""
from __future__ import annotations

import json
import zlib
from dataclasses import dataclass

import numpy as np
import torch

from diffprune import encoding

LAYOUT_KEY = "layout"
UPPER_KEY = "positions.upper"
LOWER_KEY = "positions.lower"
VALUES_KEY = "values"
PACKED_KEYS = (LAYOUT_KEY, UPPER_KEY, LOWER_KEY, VALUES_KEY)

VALUE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
VALUE_DTYPE_ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


class PackError(ValueError):
    """Positions or values that cannot be packed, or packed tensors that do not decode."""


def value_dtype(name: str | torch.dtype) -> torch.dtype:
    """torch dtype of a values option: fp32 / float32 (default), bf16 / bfloat16, fp16 / float16."""
    if isinstance(name, torch.dtype):
        if name not in VALUE_DTYPES.values():
            raise ValueError(f"values dtype {name} is not one of float32, bfloat16, float16")
        return name
    key = VALUE_DTYPE_ALIASES.get(str(name).lower(), str(name).lower())
    if key not in VALUE_DTYPES:
        raise ValueError(f"values dtype {name!r} is not one of fp32, bf16, fp16")
    return VALUE_DTYPES[key]


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


@dataclass(frozen=True)
class Layout:
    """The diffed tensors in order: (name, shape, dtype name); their global offsets follow."""

    entries: tuple[tuple[str, tuple[int, ...], str], ...]

    @property
    def numels(self) -> list[int]:
        return [int(np.prod(shape, dtype=np.int64)) for _, shape, _ in self.entries]

    @property
    def offsets(self) -> dict[str, int]:
        starts = np.concatenate([[0], np.cumsum(self.numels, dtype=np.int64)])
        return {name: int(start) for (name, _, _), start in zip(self.entries, starts)}

    @property
    def universe(self) -> int:
        return int(sum(self.numels))

    def shapes(self) -> dict[str, dict]:
        """{name: {"shape", "dtype"}}: version 2's header field ``tensors``."""
        return {name: {"shape": list(shape), "dtype": dtype} for name, shape, dtype in self.entries}

    @classmethod
    def from_shapes(cls, shapes: dict[str, dict]) -> "Layout":
        return cls(tuple((name, tuple(int(s) for s in entry["shape"]), str(entry["dtype"]))
                         for name, entry in shapes.items()))

    def to_tensor(self) -> torch.Tensor:
        """zlib-compressed JSON (a 6-layer BERT's 103 tensors: ~1 KB instead of ~7 KB)."""
        text = json.dumps([[n, list(s), d] for n, s, d in self.entries], separators=(",", ":"))
        return torch.from_numpy(np.frombuffer(zlib.compress(text.encode(), 9), dtype=np.uint8).copy())

    @classmethod
    def from_tensor(cls, tensor: torch.Tensor, source: str) -> "Layout":
        try:
            entries = json.loads(zlib.decompress(tensor.numpy().tobytes()).decode())
            return cls(tuple((str(n), tuple(int(x) for x in s), str(d)) for n, s, d in entries))
        except (zlib.error, ValueError, TypeError) as error:
            raise PackError(f"{source}: its layout tensor is not compressed JSON [[name, shape, dtype], ...] "
                            f"({error})") from error


def pack(layout: Layout, positions: dict[str, torch.Tensor], values: dict[str, torch.Tensor],
         values_dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The packed tensors (layout, upper / lower position bits, values) of a per-tensor diff."""
    offsets = layout.offsets
    unknown = sorted(set(positions) - set(offsets))
    if unknown:
        raise PackError(f"tensors not in the layout: {unknown[:5]}")
    if set(positions) != set(values):
        raise PackError(f"positions and values must come in pairs; unpaired: {sorted(set(positions) ^ set(values))[:5]}")
    global_parts, value_parts = [], []
    for name, _, _ in layout.entries:
        if name not in positions:
            continue
        local = positions[name].detach().cpu().reshape(-1).to(torch.int64)
        vals = values[name].detach().cpu().reshape(-1)
        if local.numel() != vals.numel():
            raise PackError(f"{name} has {local.numel()} positions but {vals.numel()} values")
        order = torch.argsort(local, stable=True)
        global_parts.append(local[order].numpy() + offsets[name])
        value_parts.append(vals[order].to(torch.float32))
    global_positions = np.concatenate(global_parts) if global_parts else np.zeros(0, dtype=np.int64)
    try:
        upper, lower = encoding.encode(global_positions, layout.universe)
    except encoding.EncodingError as error:
        raise PackError(str(error)) from error
    all_values = torch.cat(value_parts) if value_parts else torch.zeros(0)
    stored_values = all_values.to(values_dtype)
    if not torch.isfinite(stored_values).all():
        raise PackError(f"values overflow {dtype_name(values_dtype)} (largest magnitude "
                        f"{float(all_values.abs().max()):.4g}): keep them in float32")
    return {LAYOUT_KEY: layout.to_tensor(), UPPER_KEY: torch.from_numpy(upper), LOWER_KEY: torch.from_numpy(lower),
            VALUES_KEY: stored_values.contiguous()}


def unpack(tensors: dict[str, torch.Tensor], count: int, source: str
           ) -> tuple[Layout, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(layout, int64 flat positions per tensor, values per tensor) of packed tensors."""
    missing = [key for key in PACKED_KEYS if key not in tensors]
    if missing:
        raise PackError(f"{source}: a version-3 diff holds {', '.join(PACKED_KEYS)}; missing {missing}")
    for key in (LAYOUT_KEY, UPPER_KEY, LOWER_KEY):
        if tensors[key].dtype != torch.uint8 or tensors[key].ndim != 1:
            raise PackError(f"{source}: {key} must be a 1-D uint8 tensor")
    layout = Layout.from_tensor(tensors[LAYOUT_KEY], source)
    values = tensors[VALUES_KEY]
    if values.ndim != 1 or values.dtype not in VALUE_DTYPES.values() or values.numel() != count:
        raise PackError(f"{source}: values must be a 1-D float32/bfloat16/float16 tensor of {count} entries "
                        f"(the header's nonzeros), got {dtype_name(values.dtype)} of shape {tuple(values.shape)}")
    try:
        global_positions = encoding.decode(tensors[UPPER_KEY].numpy(), tensors[LOWER_KEY].numpy(),
                                           layout.universe, count)
    except encoding.EncodingError as error:
        raise PackError(f"{source}: its positions do not decode: {error}") from error
    offsets = np.array(list(layout.offsets.values()) + [layout.universe], dtype=np.int64)
    bounds = np.searchsorted(global_positions, offsets)
    positions, per_tensor_values = {}, {}
    for i, (name, _, _) in enumerate(layout.entries):
        start, end = int(bounds[i]), int(bounds[i + 1])
        if end > start:
            positions[name] = torch.from_numpy(global_positions[start:end] - offsets[i])
            per_tensor_values[name] = values[start:end]
    return layout, positions, per_tensor_values
