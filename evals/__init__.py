"""Long-document evaluation: task generators, loaders, scorers, runner, reports.

Filled in by the evaluation issue; see ../shared/DESIGN.md.
"""
