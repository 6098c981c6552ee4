"""aidetect: detect AI-generated images on a CPU budget.

The six stage scripts in `solution/` are thin entry points into this package;
`explainability/`, `report/`, `benchmarks/` and `tests/` import the same code.
"""
__version__ = "0.1.0"
