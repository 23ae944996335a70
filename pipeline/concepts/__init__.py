"""Concept sets (SPEC §4, thesis §4.3 step 2): generate candidates from ConceptNet, a local
LLM or a user file, filter them, and read / write the concept files a cache is built on.

`io` (read_concept_file, ConceptSet) is light; `run` loads models only when it needs them.
"""

from .config import ConceptsConfig
from .filter import FilterRules, filter_concepts, normalize_concept
from .io import ConceptFileError, ConceptSet, read_concept_file
from .run import ConceptsError, ConceptsResult, run

__all__ = [
    "ConceptFileError",
    "ConceptSet",
    "ConceptsConfig",
    "ConceptsError",
    "ConceptsResult",
    "FilterRules",
    "filter_concepts",
    "normalize_concept",
    "read_concept_file",
    "run",
]
