"""`python -m repotune ...` is the `repotune` command (the API starts runs this way)."""

from repotune.cli import main

main()
