"""`python cli.py ...` from a checkout: the same commands as the installed `clipcbm` script
(`clipcbm.cli`)."""

from clipcbm.cli import main

if __name__ == "__main__":
    main()
