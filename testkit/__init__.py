"""Test doubles and process helpers shared by the tests and the benchmarks.

Not part of the product: the wheel carries only `masterplan`, `api`, `tasks`, `workers` and
`migrations`. The stub provider the embedded default runs on lives in `masterplan.llm.stub`.
"""
