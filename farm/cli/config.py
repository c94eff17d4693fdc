"""`farm config`: the effective configuration, each setting with where its value came from (the environment, a
line of the config file, or the default), as git's `config --show-origin` and ccache's `-p` show theirs."""

from __future__ import annotations

import argparse
from dataclasses import asdict

from rich.markup import escape
from rich.table import Table

from farm.cli.common import EXIT_OK, Command, add_json, print_json
from farm.cli.console import out, say


class Config(Command):
    def add_options(self, parser: argparse.ArgumentParser) -> None:
        add_json(parser)

    def run(self, args: argparse.Namespace) -> int:
        import os

        from farm.config import FarmConfig, default_config_file

        _, settings, file = FarmConfig.explained()
        if args.json:
            print_json({"config_file": str(file) if file else None, "settings": [asdict(s) for s in settings]})
            return EXIT_OK
        where = file or default_config_file(os.environ)
        title = f"farm configuration (config file: {escape(str(file))})" if file else \
            f"farm configuration (no config file; the default place is {escape(str(where))})"
        table = Table(title=title)
        for column in ("setting", "value", "from"):
            table.add_column(column)
        for setting in settings:
            table.add_row(setting.name, escape(setting.value) or "[dim](unset)[/]", escape(setting.origin))
        out().print(table)
        if file is None:
            say("a config file is TOML: `opt_level = 1`, `cache_dir = \"/srv/farm\"` (FARM_CONFIG names another file; "
                "the environment wins over it)")
        return EXIT_OK
