"""Help texts of the options every stage-two command shares (one wording everywhere)."""

VERIFY_HELP = (
    "Check every array read from the cache against the checksum recorded when it was written "
    "(--no-verify skips it, for a cache you checked once with `cache verify`)."
)
ALLOW_OVERLAP_HELP = (
    "Report on a test split that shares images with the training split (identical embeddings "
    "or file ids) anyway; by default more than 0.1% shared rows is refused as a leak."
)
KNN_ALLOW_OVERLAP_HELP = (
    "Classify a query split that shares images with the bank split (identical embeddings or "
    "file ids) anyway; by default more than 0.1% shared rows is refused as a leak."
)
OVERWRITE_RESULTS_HELP = (
    "Replace results in --out that a run with other settings wrote (same settings: always "
    "refreshed)."
)
