"""`python -m kvstore.cli` is the `kvstore` command (cluster up starts nodes this way)."""

from kvstore.cli import main

main()
