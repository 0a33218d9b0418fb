"""Write or check the SHA-256 manifest of a token-label directory: per-image label files (.npy, or the
official .pt) or a pack written by tools/pack_labels.py (its index.json and shards).

    python tools/verify_labels.py --write data/label_top5_train_nfnet    # -> data/label_top5_train_nfnet.sha256
    python tools/verify_labels.py --verify data/label_top5_train_nfnet   # after copying or downloading it

The manifest (default <DIR>.sha256, beside the directory) has one '<sha256>  <relative path>' line per file,
as sha256sum writes them: 'cd DIR && sha256sum -c MANIFEST' checks it too. --verify hashes every listed file
and names on stderr each file whose content changed, each listed file that is missing and each file the
manifest does not list; the exit code is then 1 (2 for a missing directory or a malformed manifest).
"""
from __future__ import annotations

import argparse
import sys

from passl_tl.token_labels.manifest import (Verification, default_manifest, list_files, read_manifest,
                                            verify_manifest, write_manifest)
from passl_tl.utils.cli import run_tool
from passl_tl.utils.progress import Progress


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("directory", help="label directory or pack")
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write", action="store_true", help="hash every file and write the manifest")
    mode.add_argument("--verify", action="store_true", help="check every file against the manifest")
    parser.add_argument("--manifest", help="manifest file (default: <directory>.sha256)")
    return parser.parse_args(argv)


def report_problems(result: Verification) -> None:
    """Every difference on stderr, one file per line, then the counts."""
    for what, names in (("changed", result.changed), ("missing", result.missing),
                        ("not in the manifest", result.unlisted)):
        for name in names:
            print(f"{what}: {name}", file=sys.stderr)
    print(f"{len(result.changed)} changed, {len(result.missing)} missing, {len(result.unlisted)} not in the "
          f"manifest; {result.matched} files match", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Write or verify; returns the exit code (1 when the directory differs from its manifest)."""
    args = parse_args(argv)
    manifest = args.manifest or default_manifest(args.directory)
    present = list_files(args.directory, manifest)
    if args.write:
        with Progress(len(present), "hashed files") as progress:
            write_manifest(args.directory, present, manifest, progress.update)
        print(f"{manifest}: SHA-256 of the {len(present)} files of {args.directory}")
        return 0
    expected = read_manifest(manifest)
    with Progress(len(expected), "verified files") as progress:
        result = verify_manifest(args.directory, expected, present, progress.update)
    if not result.ok:
        report_problems(result)
        return 1
    print(f"{args.directory}: all {result.matched} files match {manifest}")
    return 0


if __name__ == "__main__":
    run_tool(main)
