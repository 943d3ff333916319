"""Stream sharding (issue 18): bytes each stream reader opens, 2 ranks x 2 DataLoader workers.

    python bench/bench_stream_shards.py [--files 16] [--copies 2]

One corpus (Tiny Shakespeare paragraphs, `--copies` times, ~1.1 MB each) split into 16, 4, 2 or
1 JSON-lines files. For each rank, a real `DataLoader(StreamingWindows(...), num_workers=2)` reads
one epoch; inside each worker the bytes of every file it opens are counted (the files source's
`read_text`, patched before the workers fork), and the worker's /proc/self/io `rchar` (every byte
its read() calls returned) as a cross-check. The same for a Hugging Face `json` dataset streamed
over the 16 files (rchar only: `datasets` reads the files itself). "before" is the old algorithm
on the 16 files: every reader reads the whole stream and keeps every 4th document.
Target: each reader reads ~1/4 of the source (<= 0.30) with 16 files.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import tempfile
from pathlib import Path

from common import Row, print_rows

from conftest import fixture_text

LOG: Path | None = None  # where workers append "rank worker kind bytes" lines
RANK = 0  # the rank whose DataLoader is reading (its workers fork with it)


def _rchar() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    return 0


def _slot_name(rank: int) -> str:
    from torch.utils.data import get_worker_info

    info = get_worker_info()
    return f"{rank} {info.id if info else 0}"


def _record(line: str) -> None:
    with open(LOG, "a") as f:
        f.write(line + "\n")


def counting_classes():
    import microgpt.data.sources as sources
    from microgpt.data.streaming import StreamingWindows, documents_after

    real_read_text = sources.read_text

    def read_text(path):
        text = real_read_text(path)
        _record(f"{_slot_name(RANK)} opened {Path(path).stat().st_size}")
        return text

    sources.read_text = read_text

    class _Counting(StreamingWindows):
        def __iter__(self):
            start = _rchar()
            yield from super().__iter__()
            _record(f"{_slot_name(self.rank)} rchar {_rchar() - start}")

    class _EveryNth(_Counting):
        """The algorithm this replaced: the whole stream, every n-th document kept."""

        def slot_documents(self, slot, slots):
            docs = documents_after(self.sources, self.skip_documents, self.held_out)
            return itertools.islice(docs, slot, None, slots)

    class _OpenOnly(_Counting):
        """Opens the Hugging Face dataset and reads no record: what `load_dataset` costs a reader."""

        def slot_documents(self, slot, slots):
            from microgpt.data.hf import open_dataset

            source = self.sources[0]
            open_dataset(source["path"], source.get("name"), source.get("split", "train"), source.get("data_files"), True)
            return iter(())

    return _Counting, _EveryNth, _OpenOnly


def measure(cls, source: dict, tokenizer) -> dict[str, dict[str, int]]:
    global RANK
    from torch.utils.data import DataLoader

    from microgpt.data.sources import documents_from

    next(documents_from(source))  # imports and caches here, before the workers fork: their rchar is the data
    LOG.write_text("")
    for rank in (0, 1):
        RANK = rank
        ds = cls([source], tokenizer, block_size=64, batch_size=8, rank=rank, world_size=2, epochs=1)
        for _ in DataLoader(ds, batch_size=8, num_workers=2):
            pass
    per_slot: dict[str, dict[str, int]] = {}
    for line in LOG.read_text().splitlines():
        rank, worker, kind, size = line.split()
        slot = per_slot.setdefault(f"r{rank}w{worker}", {"opened": 0, "rchar": 0})
        slot[kind] += int(size)
    return per_slot


def main(argv: list[str] | None = None) -> list[Row]:
    global LOG
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=16)
    parser.add_argument("--copies", type=int, default=2)
    parser.add_argument("--no-hf", action="store_true")
    args = parser.parse_args(argv)

    from microgpt.core.tokenizer import TiktokenTokenizer

    tokenizer = TiktokenTokenizer("gpt2")
    paragraphs = [p for p in fixture_text("tinyshakespeare.txt").split("\n\n") if p.strip()]
    docs = [f"[{c}] {p}" for c in range(args.copies) for p in paragraphs]
    counting, every_nth, open_only = counting_classes()
    rows, detail = [], []
    with tempfile.TemporaryDirectory() as tmp:
        LOG = Path(tmp) / "reads.log"
        cases = []
        for files in sorted({args.files, 4, 2, 1}, reverse=True):
            folder = Path(tmp) / f"files{files}"
            folder.mkdir()
            for f in range(files):
                (folder / f"{f:03d}.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs[f::files]))
            total = sum(p.stat().st_size for p in folder.iterdir())
            cases.append((f"{files} files", counting, {"kind": "files", "paths": [str(folder)]}, total, "opened"))
            if files == args.files:
                cases.append((f"{files} files, before (every 4th document)", every_nth,
                              {"kind": "files", "paths": [str(folder)]}, total, "opened"))
                if not args.no_hf:
                    hf = {"kind": "hf", "path": "json", "streaming": True,
                          "data_files": sorted(str(p) for p in folder.iterdir())}
                    cases.append((f"hf json dataset, {files} files (shards)", counting, hf, total, "rchar"))
        overhead: dict[str, int] = {}
        if not args.no_hf:  # what load_dataset reads in a worker before any record: the same source, opened only
            hf = next(c[2] for c in cases if c[4] == "rchar")
            per_slot = measure(open_only, hf, tokenizer)
            overhead = {slot: c["rchar"] for slot, c in per_slot.items()}
            detail.append(Row("stream shards", f"hf json dataset, {args.files} files: rchar per worker of load_dataset alone "
                              "(it reads the first file to infer the schema; subtracted below)",
                              ", ".join(f"{s} {v / 1e3:.0f} kB" for s, v in sorted(overhead.items()))))
        for name, cls, source, total, kind in cases:
            per_slot = measure(cls, source, tokenizer)
            if kind == "rchar":
                detail.append(Row("stream shards", f"{name}: rchar / source per reader, before subtracting", ", ".join(
                    f"{s} {c['rchar'] / total:.2f}" for s, c in sorted(per_slot.items()))))
                for slot, c in per_slot.items():
                    c["rchar"] -= overhead.get(slot, 0)
            shares = {slot: counts[kind] / total for slot, counts in sorted(per_slot.items())}
            detail.append(Row("stream shards", f"{name}, {total / 1e6:.2f} MB: bytes {kind} / source, per reader"
                              + (" (less load_dataset's read)" if kind == "rchar" else ""),
                              ", ".join(f"{s} {v:.2f}" for s, v in shares.items())
                              + (" (rchar: " + ", ".join(f"{per_slot[s]['rchar'] / total:.2f}" for s in shares) + ")"
                                 if kind == "opened" else "")))
            if name == f"{args.files} files" or name.startswith("hf"):
                worst = max(shares.values())
                less = ", less load_dataset's schema read" if kind == "rchar" else ""
                rows.append(Row("stream shards", f"{name}, 2 ranks x 2 workers: largest share of the source one reader reads{less}",
                                f"{worst:.2f} (readers: {', '.join(f'{v:.2f}' for v in shares.values())})",
                                "~1/4 (<= 0.30)", worst <= 0.30 and len(shares) == 4))
    print_rows(f"Stream sharding: bytes read per reader (load {os.getloadavg()[0]:.1f})", detail + rows)
    return rows


if __name__ == "__main__":
    main()
