"""Coverage-guided fuzz targets (atheris/libFuzzer) for the parsers that read attacker
or operator input. ``fuzz/targets.py`` holds the targets, ``fuzz/run.py`` drives them,
``fuzz/corpus/<target>/`` holds the small seed corpus kept in the repository."""
