"""Azure ML provider tests: the real MLClient against the in-process fake workspace."""
