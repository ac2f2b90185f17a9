"""Bytes of a diff file against its information limit, and conversion of old files.

``python -m diffprune.diffsize report FILE...`` prints, per file, where its bytes go and how far the file is from

    limit = log2 C(d, k) / 8  +  k x (bytes per value)  +  bytes of the dense head and buffers

(d diffed entries, k kept): the fewest bytes any file can have that stores which k entries
moved, their values in the stored dtype, and the task head. ``--json`` prints the numbers as
JSON. ``convert OLD NEW [--values-dtype bf16]`` rewrites a version-1/2 file (or a version-3
one) as version 3, in the values dtype asked for.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from diffprune import encoding, packed
from diffprune.rungraph import rate_label

TARGET_RATIO = 1.15  # issue 14: file bytes <= 1.15 x the limit, header included


def _tensor_bytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def size_report(path, repeats: int = 5) -> dict:
    """Where the bytes of diff file ``path`` go, its information limit, and its decode time
    (median of ``repeats`` full ``load_diff`` calls: read, checksum, decode)."""
    from diffprune.storage import layout_of, load_diff, read_header

    path = Path(path)
    read_header(path)  # a clear error for a file that is not a sparse diff, before timing anything
    timings = []
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        diff = load_diff(path)
        timings.append(time.perf_counter() - start)
    raw = load_file(str(path))
    count, universe = diff.nonzeros, layout_of(diff).universe
    head_bytes = sum(_tensor_bytes(t) for key, t in raw.items() if key.startswith(("head.", "buffer.")))
    if diff.layout_tensor is not None:
        position_bytes = _tensor_bytes(raw[packed.UPPER_KEY]) + _tensor_bytes(raw[packed.LOWER_KEY])
        value_bytes = _tensor_bytes(raw[packed.VALUES_KEY])
        layout_bytes = _tensor_bytes(raw[packed.LAYOUT_KEY])
    else:
        position_bytes = sum(_tensor_bytes(t) for key, t in raw.items() if key.endswith(".positions"))
        value_bytes = sum(_tensor_bytes(t) for key, t in raw.items() if key.endswith(".values"))
        layout_bytes = 0
    decode_ms = float("nan")
    if diff.layout_tensor is not None:  # the positions' decode alone, from the tensors in memory
        decode_timings = []
        for _ in range(max(1, repeats)):
            start = time.perf_counter()
            packed.unpack({key: raw[key] for key in packed.PACKED_KEYS}, count, str(path))
            decode_timings.append(time.perf_counter() - start)
        decode_ms = 1000 * statistics.median(decode_timings)
    file_bytes = path.stat().st_size
    bytes_per_value = value_bytes / count if count else 4
    position_limit = encoding.position_bits_limit(universe, count) / 8
    limit = position_limit + count * bytes_per_value + head_bytes
    return {
        "file": str(path), "version": "3" if diff.layout_tensor is not None else "1 or 2",
        "task": diff.header.get("task"), "rate": diff.header.get("rate"),
        "diffed_params": universe, "nonzeros": count, "values_dtype": diff.header.get("values_dtype"),
        "file_bytes": file_bytes, "position_bytes": position_bytes, "position_limit_bytes": position_limit,
        "value_bytes": value_bytes, "head_bytes": head_bytes, "layout_bytes": layout_bytes,
        "header_bytes": file_bytes - position_bytes - value_bytes - head_bytes - layout_bytes,
        "limit_bytes": limit, "file_vs_limit": file_bytes / limit,
        "positions_vs_limit": position_bytes / position_limit if position_limit else float("nan"),
        "load_ms": 1000 * statistics.median(timings), "decode_ms": decode_ms,
    }


def format_report(report: dict) -> str:
    ok = "within" if report["file_vs_limit"] <= TARGET_RATIO else "ABOVE"
    rate = report["rate"] if report["rate"] is None else rate_label(report["rate"])
    return "\n".join([
        f"{report['file']} (version {report['version']}, task {report['task']}, rate {rate}%)",
        f"  k = {report['nonzeros']:,} of d = {report['diffed_params']:,} entries, values {report['values_dtype']}",
        f"  positions {report['position_bytes']:>10,} B   limit log2 C(d,k)/8 = {report['position_limit_bytes']:,.0f} B"
        f"   ({report['positions_vs_limit']:.3f}x)",
        f"  values    {report['value_bytes']:>10,} B",
        f"  head      {report['head_bytes']:>10,} B   (dense head and task buffers)",
        f"  header    {report['header_bytes'] + report['layout_bytes']:>10,} B   (JSON header, safetensors index, layout)",
        f"  file      {report['file_bytes']:>10,} B   limit {report['limit_bytes']:,.0f} B: "
        f"{report['file_vs_limit']:.3f}x ({ok} the {TARGET_RATIO}x target)",
        f"  load_diff (read, checksum, decode): {report['load_ms']:.1f} ms; decode alone: "
        f"{report['decode_ms']:.1f} ms (medians)",
    ])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m diffprune.diffsize", description=__doc__.split("\n\n")[0])
    verbs = parser.add_subparsers(dest="verb", required=True)
    report = verbs.add_parser("report", help="bytes of diff files against their information limit")
    report.add_argument("files", nargs="+", help="diff.safetensors files")
    report.add_argument("--json", action="store_true", help="print one JSON object per file")
    report.add_argument("--repeats", type=int, default=5, help="load_diff calls timed per file (median)")
    convert = verbs.add_parser("convert", help="rewrite a diff file as version 3")
    convert.add_argument("source", help="diff file of any version")
    convert.add_argument("out", help="version-3 file to write")
    convert.add_argument("--values-dtype", default="fp32", help="fp32 (default), bf16 or fp16")
    return parser


def main(argv: list[str] | None = None) -> int:
    from diffprune.storage import DiffFileError, load_diff, write_diff

    args = build_parser().parse_args(argv)
    try:
        if args.verb == "report":
            for file in args.files:
                report = size_report(file, args.repeats)
                print(json.dumps(report) if args.json else format_report(report))
        else:
            if Path(args.out).resolve() == Path(args.source).resolve():
                raise ValueError(f"convert {args.source}: write to another file (the source is read whole first)")
            path = write_diff(args.out, load_diff(args.source), values_dtype=args.values_dtype)
            print(f"wrote {path} ({path.stat().st_size:,} B, values {packed.dtype_name(packed.value_dtype(args.values_dtype))})")
    except (DiffFileError, ValueError, FileNotFoundError) as error:
        print(f"diffprune.diffsize {args.verb}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
