"""``python -m genlab`` and the ``genlab`` console script: the Hydra app."""

from genlab.cli import main

if __name__ == "__main__":
    main()
