"""`python -m churnwatch.stream worker|learner`: the stream commands without the full CLI."""

from __future__ import annotations

import click

from churnwatch.stream.commands import register


@click.group()
def main() -> None:
    """churnwatch streaming processes."""


register(main)

if __name__ == "__main__":
    main()
