"""``python -m buddyrules``: the same command as the ``buddyrules`` script."""

from buddyrules.cli import main

if __name__ == "__main__":
    main()
