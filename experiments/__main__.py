"""`python -m experiments {list,run,all,report}`: the harness CLI over the registry."""

import sys

from experiments.harness import cli
from experiments.registry import EXPERIMENTS


def main(argv=None) -> int:
    """The CLI over every registered experiment (see `experiments.harness.cli.main`)."""
    return cli.main(sys.argv[1:] if argv is None else argv, EXPERIMENTS)


if __name__ == "__main__":
    sys.exit(main())
