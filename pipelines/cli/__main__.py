"""``python -m pipelines.cli`` = ``zo``."""
from pipelines.cli import main

main()
