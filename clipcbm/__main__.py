"""`python -m clipcbm ...`: the same commands as the `clipcbm` console script."""

from clipcbm.cli import main

main()
