"""`keygen`: the Ed25519 key pair with which builders sign artifacts and nodes verify them before loading."""

from __future__ import annotations

import argparse
from pathlib import Path

from farm.cli.common import EXIT_OK, Command


class Keygen(Command):
    def add_options(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("-o", "--output", default="farm-signing", metavar="PREFIX",
                            help="write PREFIX.key and PREFIX.pub (never overwritten); default farm-signing")

    def run(self, args: argparse.Namespace) -> int:
        from farm.cache.signing import write_key_pair

        pair = write_key_pair(Path(args.output))
        print(f"private key: {pair.private_path}  (mode 0600: builders only, as FARM_SIGNING_KEY)")
        print(f"public key:  {pair.public_path}  (every node, as FARM_VERIFY_KEY)")
        print(f"key id:      {pair.key_id}")
        return EXIT_OK
