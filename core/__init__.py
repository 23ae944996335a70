"""Foundation shared by every stage: the error root, the device rule, atomic writes, config -> CLI.

Nothing here imports a stage (`cache`, `pipeline`, `heads`), and nothing imports torch at module
level, so `cache/` stays torch-free while using it.
"""
